//! The `orrery` command-line tool: `inspect`, `run`, `compile`, `encode-text`, `generate`,
//! `make-pipeline` and `plan`.
//!
//! Logs and progress go to stderr; with `--json`, stdout carries exactly one JSON object.

mod bind;
mod chunked;
mod cmd_compile;
mod cmd_encode_text;
mod cmd_generate;
mod cmd_inspect;
mod cmd_make_pipeline;
mod cmd_plan;
mod cmd_run;
mod component_plan;
mod embedded;
mod interrupt;
mod plan_cache;
mod tensor_file;

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "orrery", version, about = "Compile and run diffusion world models (NVIDIA Cosmos first)")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// List the tensors of a checkpoint (dtypes, shapes, bytes) or the components of a folder.
    /// Exits non-zero when a pickle references globals orrery does not know.
    Inspect {
        /// A weights file (.safetensors, .pt, .pth, .bin) or a diffusers/transformers folder.
        path: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Run one component on inputs from a safetensors file; outputs are written as f32.
    Run(cmd_run::RunArgs),
    /// Build and plan a component at given input shapes; weights are optional.
    Compile(cmd_compile::CompileArgs),
    /// Tokenize prompts and run the T5 text encoder on them; prints the token ids and
    /// statistics of the embeddings.
    EncodeText(cmd_encode_text::EncodeTextArgs),
    /// Text2World or Video2World: a prompt (and input frames) to a video, with a diffusers Cosmos pipeline folder.
    Generate(Box<cmd_generate::GenerateArgs>),
    /// Write a Cosmos-architecture pipeline with random weights (tests, benchmarks).
    MakePipeline(cmd_make_pipeline::MakePipelineArgs),
    /// Predict a run's peak memory, weight traffic and time per step on this CPU or modelled devices.
    Plan(cmd_plan::PlanArgs),
}

fn main() -> ExitCode {
    orrery_runtime::configure_allocator();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Inspect { path, json } => cmd_inspect::inspect(&path, json),
        Command::Run(args) => cmd_run::run(&args),
        Command::Compile(args) => cmd_compile::compile(&args),
        Command::EncodeText(args) => cmd_encode_text::encode_text(&args),
        Command::Generate(args) => cmd_generate::generate(&args),
        Command::MakePipeline(args) => cmd_make_pipeline::make_pipeline(&args),
        Command::Plan(args) => cmd_plan::plan(&args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
