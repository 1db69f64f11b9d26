//! `orrery make-pipeline --out DIR [--preset medium] [--video-to-world] [--seed S]`: writes a
//! Cosmos-architecture pipeline with random weights (for tests and benchmarks of the runtime
//! at sizes between the built-in tiny one and the real models; its videos are noise).

use anyhow::{bail, Result};
use orrery_pipeline::{write_synthetic_pipeline, SyntheticSize};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Preset {
    /// T5 256 × 2 layers, DiT 256 (4 × 64) × 4 layers, VAE widths (32, 64, 64, 64): 43 MB.
    Medium,
    /// The real 7B transformer's shapes and the tokenizer's real widths, bf16, a small T5 of
    /// the real width: about 14 GB (the runtime's scale benchmark).
    Dit7b,
}

#[derive(clap::Args)]
pub struct MakePipelineArgs {
    /// The folder to write (must not exist yet, or be empty).
    #[arg(long)]
    out: PathBuf,
    #[arg(long, value_enum, default_value_t = Preset::Medium)]
    preset: Preset,
    /// A CosmosVideoToWorldPipeline (the transformer takes the condition mask).
    #[arg(long)]
    video_to_world: bool,
    /// Seed of the random weights.
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

pub fn make_pipeline(args: &MakePipelineArgs) -> Result<ExitCode> {
    if args.out.exists() && std::fs::read_dir(&args.out)?.next().is_some() {
        bail!("{} exists and is not empty: give a new folder", args.out.display());
    }
    let size = match args.preset {
        Preset::Medium => SyntheticSize { video_to_world: args.video_to_world, ..SyntheticSize::MEDIUM },
        Preset::Dit7b => SyntheticSize { video_to_world: args.video_to_world, ..SyntheticSize::DIT_7B },
    };
    let tokenizer = crate::embedded::pipeline_dir()?.join("tokenizer");
    let bytes = write_synthetic_pipeline(&args.out, &size, &tokenizer, args.seed)?;
    eprintln!(
        "orrery: wrote {} ({:.1} MB of random weights; its videos are noise)",
        args.out.display(),
        bytes as f64 / 1e6
    );
    Ok(ExitCode::SUCCESS)
}
