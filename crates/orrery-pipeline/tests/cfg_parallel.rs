//! CFG parallelism: the tiny Text2World run with its two guidance branches on two in-process
//! ranks gives the single-rank run's latents after every step and its decode bit for bit, with
//! either sampler; a run that streams its weights refuses it up front.

mod common;

use common::{fixture, Run};
use orrery_cpu::CpuTensor;
use orrery_pipeline::{CosmosPipeline, GenerateOutput, MemoryBudget, PipelineError, SamplerKind};

fn bits(t: &CpuTensor) -> Vec<u32> {
    t.to_f32_vec().iter().map(|v| v.to_bits()).collect()
}

fn assert_same_run(a: &GenerateOutput, b: &GenerateOutput, what: &str) {
    assert_eq!(a.step_latents.len(), b.step_latents.len());
    for (i, (x, y)) in a.step_latents.iter().zip(&b.step_latents).enumerate() {
        assert_eq!(bits(x), bits(y), "{what}: latents after step {i}");
    }
    assert_eq!(bits(&a.decoded_raw), bits(&b.decoded_raw), "{what}: decode");
}

#[test]
fn two_ranks_give_the_single_rank_bits_with_either_sampler() {
    let dir = fixture("cosmos_t2w_tiny");
    let run = Run::open(&dir, "run");
    let pipeline = CosmosPipeline::load(&dir).unwrap();
    let noise = run.get("noise");
    let progress = |_| {};
    for sampler in [SamplerKind::DiffusersEdm, SamplerKind::Predict1] {
        let single = orrery_pipeline::GenerateRequest { sampler, ..run.request(&noise, &progress) };
        let one = pipeline.generate(&single).unwrap();
        let two = pipeline
            .generate(&orrery_pipeline::GenerateRequest {
                cfg_parallel: orrery_pipeline::CfgParallel::InProcess,
                ..single
            })
            .unwrap();
        assert_same_run(&one, &two, &format!("{sampler:?}"));
        // Rank 0 ran the conditional branch, rank 1 the unconditional one (whether they overlap
        // in time is the benchmark's business: the tiny model takes well under a millisecond).
        let evaluations = |o: &GenerateOutput, rank: usize| {
            o.invocations.iter().filter(|s| s.label.starts_with("transformer") && s.rank == rank).count()
        };
        assert_eq!((evaluations(&one, 0), evaluations(&one, 1)), (2 * single.steps, 0));
        assert_eq!((evaluations(&two, 0), evaluations(&two, 1)), (single.steps, single.steps));
    }
    // Guidance off: one branch, nothing to run in parallel; the flag changes nothing.
    let unguided = orrery_pipeline::GenerateRequest { guidance: 1.0, ..run.request(&noise, &progress) };
    let a = pipeline.generate(&unguided).unwrap();
    let b = pipeline
        .generate(&orrery_pipeline::GenerateRequest {
            cfg_parallel: orrery_pipeline::CfgParallel::InProcess,
            ..unguided
        })
        .unwrap();
    assert_same_run(&a, &b, "guidance 1");
}

#[test]
fn a_streamed_run_refuses_cfg_parallelism_before_any_work() {
    let dir = fixture("cosmos_t2w_tiny");
    let run = Run::open(&dir, "run");
    let pipeline = CosmosPipeline::load(&dir).unwrap();
    let noise = run.get("noise");
    let progress = |_| {};
    let resident = pipeline.generate(&run.request(&noise, &progress)).unwrap();
    let budget = MemoryBudget::new(resident.memory.min_budget);
    let request = orrery_pipeline::GenerateRequest {
        cfg_parallel: orrery_pipeline::CfgParallel::InProcess,
        memory: Some(budget),
        ..run.request(&noise, &progress)
    };
    match pipeline.generate(&request) {
        Err(PipelineError::Invalid(m)) => assert!(m.contains("--cfg-parallel") && m.contains("--memory-budget"), "{m}"),
        other => panic!("{:?}", other.map(|_| ())),
    }
}
