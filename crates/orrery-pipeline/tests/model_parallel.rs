//! Tensor and sequence parallelism through the whole pipeline: every transformer evaluation
//! on several in-process ranks, each with its shard of the heads and MLP width (`--tp`) or of
//! the tokens (`--sp`). The decoded video is within 1e-5 relative of one rank on the tiny
//! Text2World fixture and within 1e-4 on the medium pipeline (2 and 4 ranks). The latents after each step are compared too, with the
//! bound the guidance implies: `cond + 6·(cond − uncond)` multiplies the transformer's
//! rounding difference by up to 13 before it reaches them. CFG parallelism over two groups of
//! model ranks (4 in-process ranks) is held to the same bounds; requests model parallelism
//! cannot serve are refused before any work.

mod common;

use common::{fixture, rel_err, Run};
use orrery_cpu::CpuTensor;
use orrery_parallel::InProcessGroup;
use orrery_pipeline::{
    standard_normal, write_synthetic_pipeline, CfgParallel, CosmosPipeline, GenerateOutput, GenerateRequest,
    MemoryBudget, ModelParallel, PipelineError, SamplerKind, SyntheticSize,
};
use std::path::Path;

/// The largest relative error of the video and of the latents after any step.
fn compare(tp: &GenerateOutput, one: &GenerateOutput) -> (f64, f64) {
    let video = rel_err(&tp.decoded_raw, &one.decoded_raw);
    let latents = tp.step_latents.iter().zip(&one.step_latents).map(|(a, b)| rel_err(a, b)).fold(0.0, f64::max);
    (video, latents)
}

#[test]
fn the_tiny_pipeline_on_two_ranks_of_either_kind_is_within_1e_5_of_one() {
    let dir = fixture("cosmos_t2w_tiny");
    let run = Run::open(&dir, "run");
    let pipeline = CosmosPipeline::load(&dir).unwrap();
    let noise = run.get("noise");
    let progress = |_| {};
    for sampler in [SamplerKind::DiffusersEdm, SamplerKind::Predict1] {
        let single = GenerateRequest { sampler, ..run.request(&noise, &progress) };
        let one = pipeline.generate(&single).unwrap();
        for layout in [ModelParallel::tensor(2), ModelParallel::sequence(2)] {
            let axis = layout.axis();
            let request = GenerateRequest { sampler, model_parallel: layout, ..run.request(&noise, &progress) };
            let two = pipeline.generate(&request).unwrap();
            let (video, latents) = compare(&two, &one);
            println!("{sampler:?}, {axis:?}: video {video:.2e}, latents {latents:.2e}");
            assert!(video <= 1e-5, "{sampler:?}, {axis:?}: video {video:e}");
            assert!(latents <= 13e-5, "{sampler:?}, {axis:?}: latents {latents:e}");
            let evaluations = two.invocations.iter().filter(|s| s.label.starts_with("transformer")).count();
            assert_eq!(evaluations, 2 * single.steps);
        }
    }
}

#[test]
fn the_medium_pipeline_on_two_and_four_ranks_of_either_kind_is_within_1e_4_of_one() {
    let dir = std::env::temp_dir().join(format!("orrery-medium-tp-{}", std::process::id()));
    let tokenizer = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/cosmos_t2w_tiny/tokenizer");
    write_synthetic_pipeline(&dir, &SyntheticSize::MEDIUM, &tokenizer, 11).unwrap();
    let pipeline = CosmosPipeline::load(&dir).unwrap();
    let latent = pipeline.latent_shape(64, 96, 17).unwrap();
    let noise = CpuTensor::from_vec(latent.to_vec(), standard_normal(latent.iter().product(), 4));
    let request = |model_parallel| GenerateRequest { model_parallel, ..common::medium_request(&noise) };
    let one = pipeline.generate(&request(ModelParallel::Off)).unwrap();
    for layout in [2, 4].into_iter().flat_map(|n| [ModelParallel::tensor(n), ModelParallel::sequence(n)]) {
        let (axis, ranks) = (layout.axis(), layout.ranks());
        let out = pipeline.generate(&request(layout)).unwrap();
        let (video, latents) = compare(&out, &one);
        println!("{ranks} ranks, {axis:?}: video {video:.2e}, latents {latents:.2e}");
        assert!(video <= 1e-4, "{ranks} ranks, {axis:?}: video {video:e}");
        assert!(latents <= 13e-4, "{ranks} ranks, {axis:?}: latents {latents:e}");
    }
    // 3 divides neither the 4 heads nor the 72 tokens: refused, naming the flag.
    for (layout, flag) in [(ModelParallel::tensor(3), "--tp"), (ModelParallel::sequence(3), "--sp")] {
        let err = pipeline.generate(&request(layout)).err().expect("refused").to_string();
        assert!(err.contains(flag), "{err}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn cfg_parallelism_over_two_model_parallel_groups_is_within_1e_5_of_one_rank() {
    // 2 CFG ranks × 2 model ranks in this process: each guidance branch on a group of its own.
    let dir = fixture("cosmos_t2w_tiny");
    let run = Run::open(&dir, "run");
    let pipeline = CosmosPipeline::load(&dir).unwrap();
    let noise = run.get("noise");
    let progress = |_| {};
    let one = pipeline.generate(&run.request(&noise, &progress)).unwrap();
    for layout in [ModelParallel::tensor(2), ModelParallel::sequence(2)] {
        let axis = layout.axis();
        let request = GenerateRequest {
            cfg_parallel: CfgParallel::InProcess,
            model_parallel: layout,
            threads: 4,
            ..run.request(&noise, &progress)
        };
        let four = pipeline.generate(&request).unwrap();
        let (video, latents) = compare(&four, &one);
        println!("CFG × {axis:?} 2: video {video:.2e}, latents {latents:.2e}");
        assert!(video <= 1e-5, "{axis:?}: video {video:e}");
        assert!(latents <= 13e-5, "{axis:?}: latents {latents:e}");
        // Rank 0's group ran the conditional branch, the second CFG rank's the other.
        let on =
            |rank: usize| four.invocations.iter().filter(move |s| s.label.starts_with("transformer") && s.rank == rank);
        assert!(on(0).all(|s| s.label == "transformer.cond") && on(0).count() == request.steps);
        assert!(on(1).all(|s| s.label == "transformer.uncond") && on(1).count() == request.steps);
    }
}

#[test]
fn requests_model_parallelism_cannot_serve_are_refused_before_any_work() {
    let dir = fixture("cosmos_t2w_tiny");
    let run = Run::open(&dir, "run");
    let pipeline = CosmosPipeline::load(&dir).unwrap();
    let noise = run.get("noise");
    let progress = |_| {};
    let base = || GenerateRequest { model_parallel: ModelParallel::tensor(2), ..run.request(&noise, &progress) };
    let resident = pipeline.generate(&run.request(&noise, &progress)).unwrap();
    let streamed = GenerateRequest { memory: Some(MemoryBudget::new(resident.memory.min_budget)), ..base() };
    // CFG ranks in this process cannot lead model-parallel groups of other processes.
    let comm = std::cell::RefCell::new(InProcessGroup::ranks(2).remove(0));
    let elsewhere = ModelParallel::Ranks { comm: &comm, axis: orrery_models::ShardAxis::Heads };
    let mixed = GenerateRequest { cfg_parallel: CfgParallel::InProcess, model_parallel: elsewhere, ..base() };
    for (request, words) in [(streamed, "--memory-budget"), (mixed, "both run in this process")] {
        match pipeline.generate(&request) {
            Err(PipelineError::Invalid(m)) => assert!(m.contains(words), "{m}"),
            other => panic!("{:?}", other.map(|_| ())),
        }
    }
}
