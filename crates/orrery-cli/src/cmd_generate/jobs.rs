//! The runs one `generate` makes: one from the flags, or one per line of a `--batch` JSONL
//! file. Every job's paths are checked before any model is loaded, so a batch with a bad line
//! stops before it spends hours on the lines above it.

use super::input;
use anyhow::{bail, Context, Result};
use std::collections::HashSet;
use std::path::{Path, PathBuf};

/// Where one run writes.
#[derive(Clone, Debug, Default)]
pub struct Outputs {
    pub mp4: Option<PathBuf>,
    pub frames_dir: Option<PathBuf>,
    pub dump_tensors: Option<PathBuf>,
    /// A Chrome trace of the run (not an output on its own: a run needs one of the others).
    pub trace: Option<PathBuf>,
}

/// One prompt to generate.
#[derive(Clone, Debug)]
pub struct Job {
    /// "line 3 of prompts.jsonl" in a batch (for messages), empty otherwise.
    pub origin: String,
    pub prompt: String,
    pub negative_prompt: Option<String>,
    pub seed: u64,
    pub init_noise: Option<PathBuf>,
    pub input: Option<PathBuf>,
    pub cond_frames: Option<usize>,
    pub outputs: Outputs,
}

/// The keys a batch line may set; anything else is refused (a misspelt key must not be
/// silently ignored).
const BATCH_KEYS: &[&str] =
    &["prompt", "negative_prompt", "seed", "init_noise", "input", "cond_frames", "out", "frames_dir", "dump_tensors"];

/// `path` with `_NNN` added to its stem: `video.mp4` → `video_003.mp4`.
fn numbered(path: &Path, n: usize) -> PathBuf {
    let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    let name = match path.extension() {
        Some(ext) => format!("{stem}_{n:03}.{}", ext.to_string_lossy()),
        None => format!("{stem}_{n:03}"),
    };
    path.with_file_name(name)
}

/// One job per non-empty line of `batch`; the flags' values are each line's defaults, and the
/// flags' output paths are numbered per line (`--out v.mp4` → `v_001.mp4`, …).
pub fn from_batch(batch: &Path, defaults: &Job) -> Result<Vec<Job>> {
    let text =
        std::fs::read_to_string(batch).with_context(|| format!("--batch {}: cannot read it", batch.display()))?;
    let mut jobs = Vec::new();
    for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let origin = format!("line {} of {}", i + 1, batch.display());
        let value: serde_json::Value =
            serde_json::from_str(line).with_context(|| format!("{origin}: not a JSON object"))?;
        let Some(object) = value.as_object() else { bail!("{origin}: not a JSON object") };
        if let Some(key) = object.keys().find(|k| !BATCH_KEYS.contains(&k.as_str())) {
            bail!("{origin}: unknown key `{key}` (known: {})", BATCH_KEYS.join(", "));
        }
        let text = |key: &str| -> Result<Option<String>> {
            match object.get(key) {
                None | Some(serde_json::Value::Null) => Ok(None),
                Some(serde_json::Value::String(s)) => Ok(Some(s.clone())),
                Some(_) => bail!("{origin}: `{key}` must be a string"),
            }
        };
        let number = |key: &str| -> Result<Option<u64>> {
            match object.get(key) {
                None | Some(serde_json::Value::Null) => Ok(None),
                Some(v) => v.as_u64().map(Some).with_context(|| format!("{origin}: `{key}` must be a whole number")),
            }
        };
        let path = |key: &str| text(key).map(|s| s.map(PathBuf::from));
        let prompt = text("prompt")?.with_context(|| format!("{origin}: no `prompt`"))?;
        let n = jobs.len() + 1;
        let trace = defaults.outputs.trace.as_ref().map(|p| numbered(p, n));
        let line_outputs = Outputs {
            mp4: path("out")?,
            frames_dir: path("frames_dir")?,
            dump_tensors: path("dump_tensors")?,
            trace: trace.clone(),
        };
        let outputs =
            if line_outputs.mp4.is_some() || line_outputs.frames_dir.is_some() || line_outputs.dump_tensors.is_some() {
                line_outputs
            } else {
                Outputs {
                    mp4: defaults.outputs.mp4.as_ref().map(|p| numbered(p, n)),
                    frames_dir: defaults.outputs.frames_dir.as_ref().map(|p| p.join(format!("{n:03}"))),
                    dump_tensors: defaults.outputs.dump_tensors.as_ref().map(|p| numbered(p, n)),
                    trace,
                }
            };
        jobs.push(Job {
            origin: origin.clone(),
            prompt,
            negative_prompt: text("negative_prompt")?.or_else(|| defaults.negative_prompt.clone()),
            seed: number("seed")?.unwrap_or(defaults.seed),
            init_noise: path("init_noise")?.or_else(|| defaults.init_noise.clone()),
            input: path("input")?.or_else(|| defaults.input.clone()),
            cond_frames: number("cond_frames")?.map(|n| n as usize).or(defaults.cond_frames),
            outputs,
        });
    }
    if jobs.is_empty() {
        bail!("--batch {}: no prompts (one JSON object per line, e.g. {{\"prompt\": \"...\"}})", batch.display());
    }
    Ok(jobs)
}

/// Refuses, before any work, jobs that write nothing, write where they cannot, write the same
/// file as another job, or read inputs that are missing.
pub fn check(jobs: &[Job]) -> Result<()> {
    let mut claimed = HashSet::new();
    for job in jobs {
        let at = if job.origin.is_empty() { String::new() } else { format!("{}: ", job.origin) };
        let o = &job.outputs;
        if o.mp4.is_none() && o.frames_dir.is_none() && o.dump_tensors.is_none() {
            bail!(
                "{at}nothing to write: give --out FILE.mp4, --frames-dir DIR (PNG frames) and/or --dump-tensors FILE"
            );
        }
        for path in o.mp4.iter().chain(&o.dump_tensors).chain(&o.trace) {
            let parent = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
            if !parent.exists() {
                bail!("{at}cannot write {}: the folder {} does not exist", path.display(), parent.display());
            }
            if !parent.is_dir() {
                bail!("{at}cannot write {}: {} is not a folder", path.display(), parent.display());
            }
            if path.is_dir() {
                bail!("{at}cannot write {}: it is a folder", path.display());
            }
        }
        if let Some(dir) = &o.frames_dir {
            if dir.exists() && !dir.is_dir() {
                bail!("{at}cannot write frames into {}: it is a file", dir.display());
            }
        }
        for path in o.mp4.iter().chain(&o.dump_tensors).chain(&o.frames_dir).chain(&o.trace) {
            if !claimed.insert(path.clone()) {
                bail!("{at}{} is written by an earlier job too", path.display());
            }
        }
        if let Some(path) = &job.input {
            input::check(path).map_err(|e| if job.origin.is_empty() { e } else { e.context(job.origin.clone()) })?;
        }
        if let Some(path) = &job.init_noise {
            if !path.is_file() {
                bail!("{at}--init-noise {}: no such file", path.display());
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_lines_take_the_flags_as_defaults_and_number_their_outputs() {
        let dir = std::env::temp_dir().join(format!("orrery-batch-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let batch = dir.join("prompts.jsonl");
        std::fs::write(&batch, "{\"prompt\": \"a\"}\n\n{\"prompt\": \"b\", \"seed\": 9, \"out\": \"/x/b.mp4\"}\n")
            .unwrap();
        let defaults = Job {
            origin: String::new(),
            prompt: String::new(),
            negative_prompt: Some("n".into()),
            seed: 4,
            init_noise: None,
            input: None,
            cond_frames: None,
            outputs: Outputs {
                mp4: Some("/v/video.mp4".into()),
                frames_dir: Some("/f".into()),
                dump_tensors: None,
                trace: None,
            },
        };
        let jobs = from_batch(&batch, &defaults).unwrap();
        assert_eq!(jobs.len(), 2);
        assert_eq!((jobs[0].seed, jobs[0].negative_prompt.as_deref()), (4, Some("n")));
        assert_eq!(jobs[0].outputs.mp4.as_deref(), Some(Path::new("/v/video_001.mp4")));
        assert_eq!(jobs[0].outputs.frames_dir.as_deref(), Some(Path::new("/f/001")));
        assert_eq!((jobs[1].seed, jobs[1].outputs.mp4.as_deref()), (9, Some(Path::new("/x/b.mp4"))));
        assert!(jobs[1].outputs.frames_dir.is_none(), "a line's own outputs replace the numbered ones");
        assert!(jobs[1].origin.contains("line 3"));
        for (bad, why) in [
            ("{\"prompt\": \"a\", \"promt\": 1}", "unknown key `promt`"),
            ("{\"seed\": 1}", "no `prompt`"),
            ("[1]", "not a JSON object"),
            ("{\"prompt\": \"a\", \"seed\": -1}", "whole number"),
        ] {
            std::fs::write(&batch, bad).unwrap();
            let err = format!("{:#}", from_batch(&batch, &defaults).unwrap_err());
            assert!(err.contains(why) && err.contains("line 1"), "{err}");
        }
        std::fs::write(&batch, "\n").unwrap();
        assert!(from_batch(&batch, &defaults).unwrap_err().to_string().contains("no prompts"));
        std::fs::remove_dir_all(dir).unwrap();
    }
}
