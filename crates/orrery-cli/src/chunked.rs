//! The Cosmos video tokenizer in temporal chunks (`orrery run --method encode|decode
//! --chunk-frames N`, `orrery compile … --chunk-frames N`): one plan per chunk of N latent
//! frames, each chunk's `next_state.*` outputs fed to the next chunk's `state.*` inputs, each
//! chunk's result handed on as soon as it is computed. Exact: the same result as one shot
//! (within float rounding, since kernel shapes change with the chunk).

use anyhow::{bail, Context, Result};
use orrery_compiler::{compile, Plan};
use orrery_cpu::CpuTensor;
use orrery_models::cosmos::{decoder_chunk_graph, encoder_chunk_graph, CosmosVaeConfig, TemporalChunk};
use orrery_models::{ComponentConfig, WeightTypes};
use orrery_runtime::{run_chunks, ChunkStats, Placement, WeightResolver};
use std::ops::Range;
use std::path::Path;
use std::sync::Arc;

/// The tokenizer run in chunks: its plans, which input frames each chunk reads, and where the
/// results go.
pub struct ChunkedTokenizer {
    pub method: Method,
    pub plans: Vec<Plan>,
    /// The frames (axis 2) of the input each chunk reads.
    pub input_frames: Vec<Range<usize>>,
    /// The whole output's shape.
    pub output_shape: Vec<usize>,
    /// Latent frames per chunk.
    pub frames: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    Encode,
    Decode,
}

impl Method {
    pub fn input(self) -> &'static str {
        match self {
            Method::Encode => "sample",
            Method::Decode => "z",
        }
    }

    pub fn output(self) -> &'static str {
        match self {
            Method::Encode => "latent",
            Method::Decode => "sample",
        }
    }
}

/// The tokenizer config of `component` and the method, or an error saying that chunking
/// applies only there.
pub fn tokenizer_config(component: &Path, method: &str) -> Result<(CosmosVaeConfig, Method)> {
    let config = ComponentConfig::read(component)?;
    let method = match method {
        "encode" => Method::Encode,
        "decode" => Method::Decode,
        _ => bail!("--chunk-frames applies to `--method encode` or `--method decode`, not `{method}`"),
    };
    if config.class != "AutoencoderKLCosmos" {
        bail!(
            "--chunk-frames applies to the Cosmos video tokenizer (AutoencoderKLCosmos); {} is {}",
            component.display(),
            config.class
        );
    }
    Ok((CosmosVaeConfig::from_config(&config)?, method))
}

/// What a budget keeps free beyond the planned bytes, for what the plan does not count.
pub const HEADROOM_PERCENT: u64 = 10;

fn with_headroom(bytes: u64) -> u64 {
    bytes + bytes * HEADROOM_PERCENT / 100
}

/// How the chunk size is chosen (`--chunk-frames N` or `--memory-budget SIZE`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChunkSize {
    Frames(usize),
    Budget(u64),
}

impl ChunkSize {
    /// From the two flags; `None` when neither is given (run one shot).
    pub fn from_flags(frames: Option<usize>, budget: Option<u64>) -> Option<ChunkSize> {
        frames.map(ChunkSize::Frames).or(budget.map(ChunkSize::Budget))
    }
}

impl ChunkedTokenizer {
    /// The chunk plans sized as `size` says.
    pub fn plan(
        config: &CosmosVaeConfig,
        method: Method,
        weights: &WeightTypes,
        shape: &[usize],
        size: ChunkSize,
    ) -> Result<ChunkedTokenizer> {
        match size {
            ChunkSize::Frames(frames) => ChunkedTokenizer::new(config, method, weights, shape, frames),
            ChunkSize::Budget(bytes) => ChunkedTokenizer::within_budget(config, method, weights, shape, bytes),
        }
    }

    /// The chunk plans of `method` for an input of `shape` ([B, C, frames, H, W]) in chunks of
    /// `frames` latent frames.
    pub fn new(
        config: &CosmosVaeConfig,
        method: Method,
        weights: &WeightTypes,
        shape: &[usize],
        frames: usize,
    ) -> Result<ChunkedTokenizer> {
        let name = method.input();
        let [b, c, t, h, w]: [usize; 5] = shape
            .try_into()
            .map_err(|_| anyhow::anyhow!("`{name}` must be [batch, channels, frames, h, w], got {shape:?}"))?;
        if frames == 0 {
            bail!("--chunk-frames must be at least 1");
        }
        let (r, s) = (config.temporal_compression_ratio, config.spatial_compression_ratio);
        let latent = match method {
            Method::Decode => t,
            Method::Encode if t >= 1 && (t - 1).is_multiple_of(r) => 1 + (t - 1) / r,
            Method::Encode => bail!(
                "encoding in chunks needs 1 + {r}·k video frames (whole latent frames), got {t}; \
                 trim the video or encode it in one shot"
            ),
        };
        let mut plans = Vec::new();
        let mut input_frames = Vec::new();
        for (chunk, len) in TemporalChunk::split(latent, frames) {
            let range = match method {
                Method::Decode => chunk.start..chunk.start + len,
                Method::Encode => chunk.frames(len, r),
            };
            let shape = [b, c, range.len(), h, w];
            let graph = match method {
                Method::Decode => decoder_chunk_graph(config, weights, shape, chunk),
                Method::Encode => encoder_chunk_graph(config, weights, shape, chunk),
            };
            let graph = graph.with_context(|| format!("building the chunk at latent frame {}", chunk.start))?;
            plans.push(compile(graph)?);
            input_frames.push(range);
        }
        let output_shape = match method {
            Method::Decode => vec![b, config.out_channels, 1 + r * (t - 1), h * s, w * s],
            Method::Encode => vec![b, config.latent_channels, latent, h / s, w / s],
        };
        Ok(ChunkedTokenizer { method, plans, input_frames, output_shape, frames })
    }

    /// The chunks with the most latent frames each whose run fits in `budget` bytes (see
    /// [`ChunkedTokenizer::needed_bytes`], plus [`HEADROOM_PERCENT`]), or an error saying what
    /// the smallest chunks need.
    pub fn within_budget(
        config: &CosmosVaeConfig,
        method: Method,
        weights: &WeightTypes,
        shape: &[usize],
        budget: u64,
    ) -> Result<ChunkedTokenizer> {
        let latent = match (method, shape.get(2)) {
            (Method::Decode, Some(&t)) => t,
            (Method::Encode, Some(&t)) => 1 + t.saturating_sub(1) / config.temporal_compression_ratio,
            (_, None) => bail!("`{}` must be [batch, channels, frames, h, w], got {shape:?}", method.input()),
        };
        let mut smallest = None;
        for frames in (1..=latent.max(1)).rev() {
            let chunked = ChunkedTokenizer::new(config, method, weights, shape, frames)?;
            if with_headroom(chunked.needed_bytes()) <= budget {
                return Ok(chunked);
            }
            smallest = Some(chunked);
        }
        let c = smallest.expect("at least one candidate");
        let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
        bail!(
            "--memory-budget {:.2} GiB is too small: chunks of 1 latent frame need {:.2} GiB with the headroom \
             ({:.2} GiB of weights, {:.2} GiB of activations and carried state, plus {}%)",
            gib(budget),
            gib(with_headroom(c.needed_bytes())),
            gib(c.plans[0].weight_bytes),
            gib(c.largest_resident()),
            HEADROOM_PERCENT
        )
    }

    /// The most bytes any chunk holds at once: its activations plus its inputs (the carried
    /// state included) until their last use.
    pub fn largest_resident(&self) -> u64 {
        self.plans.iter().map(|p| p.peak_resident_bytes).max().unwrap_or(0)
    }

    /// What a run of these chunks needs by the plan: the weights (all read, so all resident)
    /// plus the largest chunk's resident bytes. A process needs a little more (the allocator's
    /// slack, the program, the output written out): the real-size decode peaked 6% above.
    pub fn needed_bytes(&self) -> u64 {
        self.plans.first().map_or(0, |p| p.weight_bytes) + self.largest_resident()
    }

    /// The largest chunk's planned activation arena.
    pub fn largest_arena(&self) -> u64 {
        self.plans.iter().map(|p| p.arena_bytes).max().unwrap_or(0)
    }

    pub fn flops(&self) -> u64 {
        self.plans.iter().map(|p| p.flops).sum()
    }

    /// Runs the chunks, each on the input frames `read` gives for its range (axis 2), and
    /// hands `sink` each run of output values with its element offset in the whole output
    /// (row-major `output_shape`), chunk by chunk.
    pub fn run(
        &self,
        weights: Arc<dyn WeightResolver>,
        mut read: impl FnMut(&Range<usize>) -> Result<CpuTensor>,
        threads: usize,
        mut sink: impl FnMut(usize, &[f32]) -> Result<()>,
    ) -> Result<ChunkStats> {
        let axis = 2;
        let mut placement = Placement::new(axis, self.output_shape[axis]);
        let input_of = |i: usize| read(&self.input_frames[i]);
        let method = self.method;
        let stats =
            run_chunks(&self.plans, weights, method.input(), input_of, method.output(), threads, |_, piece| {
                let spans = placement.place(piece.shape()).map_err(anyhow::Error::from)?;
                let values = piece.to_f32_vec();
                spans.iter().try_for_each(|s| sink(s.dst, &values[s.src..s.src + s.len]))
            })?;
        placement.finish()?;
        if placement.dims() != self.output_shape {
            bail!("the chunks gave {:?}, expected {:?}", placement.dims(), self.output_shape);
        }
        Ok(stats)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../orrery-runtime/tests/fixtures").join(name)
    }

    #[test]
    fn chunking_is_the_tokenizers_encode_and_decode() {
        let vae = fixture("cosmos_vae/tiny");
        assert_eq!(tokenizer_config(&vae, "encode").unwrap().1, Method::Encode);
        assert_eq!(tokenizer_config(&vae, "decode").unwrap().1, Method::Decode);
        let err = tokenizer_config(&vae, "forward").unwrap_err().to_string();
        assert!(err.contains("not `forward`"), "{err}");
        let err = tokenizer_config(&fixture("t5/relu"), "encode").unwrap_err().to_string();
        assert!(err.contains("AutoencoderKLCosmos"), "{err}");
    }

    #[test]
    fn chunks_cover_the_video_in_whole_latent_frames() {
        let (config, _) = tokenizer_config(&fixture("cosmos_vae/tiny"), "encode").unwrap();
        let w = WeightTypes::Assumed(orrery_ir::DType::F32);
        let enc = ChunkedTokenizer::new(&config, Method::Encode, &w, &[1, 3, 33, 8, 8], 2).unwrap();
        assert_eq!(enc.input_frames, vec![0..9, 9..25, 25..33]);
        assert_eq!(enc.output_shape, vec![1, 4, 5, 1, 1]);
        let dec = ChunkedTokenizer::new(&config, Method::Decode, &w, &[1, 4, 5, 1, 1], 2).unwrap();
        assert_eq!(dec.input_frames, vec![0..2, 2..4, 4..5]);
        assert_eq!(dec.output_shape, vec![1, 3, 33, 8, 8]);
        assert!(ChunkedTokenizer::new(&config, Method::Encode, &w, &[1, 3, 32, 8, 8], 1).is_err());
        assert!(ChunkedTokenizer::new(&config, Method::Decode, &w, &[1, 4, 5, 1, 1], 0).is_err());
    }

    #[test]
    fn a_memory_budget_picks_the_largest_chunks_that_fit() {
        let (config, _) = tokenizer_config(&fixture("cosmos_vae/tiny"), "decode").unwrap();
        let w = WeightTypes::Assumed(orrery_ir::DType::F32);
        let shape = [1, 4, 5, 16, 16];
        let need: Vec<u64> = (1..=5)
            .map(|f| ChunkedTokenizer::new(&config, Method::Decode, &w, &shape, f).unwrap().needed_bytes())
            .collect();
        assert!(need[0] < need[4], "smaller chunks need less: {need:?}");
        // Exactly the one-frame need with headroom: one-frame chunks (unless a larger size
        // needs no more).
        let budget = with_headroom(need[0]);
        let picked = ChunkedTokenizer::within_budget(&config, Method::Decode, &w, &shape, budget).unwrap();
        assert!(with_headroom(picked.needed_bytes()) <= budget);
        assert_eq!(picked.frames, need.iter().rposition(|&n| with_headroom(n) <= budget).unwrap() + 1);
        // Room for everything: the whole video in one chunk.
        let all = ChunkedTokenizer::within_budget(&config, Method::Decode, &w, &shape, u64::MAX).unwrap();
        assert_eq!((all.frames, all.plans.len()), (5, 1));
        let err = ChunkedTokenizer::within_budget(&config, Method::Decode, &w, &shape, budget - 1).err().unwrap();
        assert!(err.to_string().contains("too small"), "{err}");
    }
}
