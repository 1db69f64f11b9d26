//! What a run shows while it works, on stderr: on a terminal one line per stage redrawn in
//! place (a bar with the step, σ, seconds per step and the time left); in a log (not a
//! terminal) one line per stage and step. It also keeps each stage's time for the closing
//! summary.

use super::estimate::human_time;
use orrery_pipeline::Stage;
use std::cell::{Cell, RefCell};
use std::io::{IsTerminal, Write};
use std::time::Instant;

/// Wall time per stage of one run, in seconds.
#[derive(Clone, Copy, Debug, Default)]
pub struct StageTimes {
    pub prepare: f64,
    pub text: f64,
    pub denoise: f64,
    pub steps: usize,
    pub decode: f64,
    pub write: f64,
}

impl StageTimes {
    pub fn total(&self) -> f64 {
        self.prepare + self.text + self.denoise + self.decode + self.write
    }

    pub fn add(&mut self, other: &StageTimes) {
        self.prepare += other.prepare;
        self.text += other.text;
        self.denoise += other.denoise;
        self.steps += other.steps;
        self.decode += other.decode;
        self.write += other.write;
    }

    /// "text 0.2 s · denoise 10.1 s (5 steps, 2.0 s/step) · decode 1.1 s · write 0.5 s"
    pub fn describe(&self) -> String {
        let per_step = if self.steps > 0 { self.denoise / self.steps as f64 } else { 0.0 };
        format!(
            "inputs {} · text {} · denoise {} ({} steps, {}/step) · decode {} · write {}",
            human_time(self.prepare),
            human_time(self.text),
            human_time(self.denoise),
            self.steps,
            human_time(per_step),
            human_time(self.decode),
            human_time(self.write)
        )
    }

    pub fn to_json(self) -> serde_json::Value {
        serde_json::json!({
            "inputs_seconds": self.prepare, "text_seconds": self.text, "denoise_seconds": self.denoise,
            "steps": self.steps, "decode_seconds": self.decode, "write_seconds": self.write,
        })
    }
}

pub struct Progress {
    terminal: bool,
    /// "[2/5] " in a batch.
    label: String,
    steps_started: Cell<Option<Instant>>,
    times: RefCell<StageTimes>,
}

const BAR: usize = 24;

impl Progress {
    pub fn new(label: String) -> Progress {
        Progress {
            terminal: std::io::stderr().is_terminal(),
            label,
            steps_started: Cell::new(None),
            times: RefCell::default(),
        }
    }

    /// A line that stays (ends any line being redrawn).
    pub fn line(&self, text: &str) {
        let clear = if self.terminal { "\r\x1b[2K" } else { "" };
        whole_line(&format!("{clear}orrery: {}{text}\n", self.label));
    }

    /// A line redrawn in place on a terminal; not shown in logs.
    fn transient(&self, text: &str) {
        if self.terminal {
            let mut err = std::io::stderr().lock();
            let _ = write!(err, "\r\x1b[2Korrery: {}{text}", self.label);
            let _ = err.flush();
        }
    }

    pub fn started(&self, what: &str) {
        self.transient(&format!("{what}…"));
    }

    pub fn inputs_ready(&self, seconds: f64) {
        self.times.borrow_mut().prepare = seconds;
        self.started("encoding the prompts");
    }

    pub fn stage(&self, stage: Stage) {
        match stage {
            Stage::TextEncoded { seconds } => {
                self.times.borrow_mut().text = seconds;
                self.line(&format!("text encoded in {}", human_time(seconds)));
                self.steps_started.set(Some(Instant::now()));
                self.transient("denoising…");
            }
            Stage::Step { step, steps, sigma, seconds } => {
                let elapsed = self.steps_started.get().map_or(0.0, |t| t.elapsed().as_secs_f64());
                let done = step + 1;
                let eta = elapsed / done as f64 * (steps - done) as f64;
                {
                    let mut t = self.times.borrow_mut();
                    t.denoise = elapsed;
                    t.steps = done;
                }
                if self.terminal {
                    let filled = done * BAR / steps;
                    let bar = format!("{}{}", "█".repeat(filled), "·".repeat(BAR - filled));
                    let text = format!(
                        "denoising {bar} {done}/{steps}  σ {sigma:.4}  {}/step  {} left",
                        human_time(elapsed / done as f64),
                        human_time(eta)
                    );
                    if done == steps {
                        self.line(&format!("denoised: {steps} steps in {}", human_time(elapsed)));
                        self.transient("decoding the video…");
                    } else {
                        self.transient(&text);
                    }
                } else {
                    self.line(&format!(
                        "step {done}/{steps} (σ {sigma:.4}) {}, about {} left",
                        human_time(seconds),
                        human_time(eta)
                    ));
                }
            }
            Stage::Decoded { seconds } => {
                self.times.borrow_mut().decode = seconds;
                self.line(&format!("video decoded in {}", human_time(seconds)));
                self.transient("writing…");
            }
        }
    }

    pub fn written(&self, what: &str, seconds: f64) {
        self.times.borrow_mut().write += seconds;
        self.line(&format!("wrote {what} in {}", human_time(seconds)));
    }

    pub fn times(&self) -> StageTimes {
        *self.times.borrow()
    }
}

/// Writes `line` to stderr in one call: ranks of an MPI job share one stderr, and a line
/// written in pieces can be interleaved with another rank's.
pub fn whole_line(line: &str) {
    let _ = std::io::stderr().lock().write_all(line.as_bytes());
}
