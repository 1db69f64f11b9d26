//! Running the medium pipeline (written from a seed by `write_synthetic_pipeline`) within a
//! memory budget of a quarter of its weights plus its activations: the weights are streamed
//! through a ring and the output is bit-identical to the resident run; the stream reads every
//! weight of every invocation; a budget below the run's minimum is refused up front. The tiny
//! Text2World fixture does the same at a quarter of its weights, although one of its decoder's
//! weights is half of them: that convolution runs as output-channel slices.

use orrery_cpu::CpuTensor;
use orrery_pipeline::{
    standard_normal, write_synthetic_pipeline, CosmosPipeline, GenerateRequest, MemoryBudget, SyntheticSize,
};
use std::path::Path;

mod common;

fn request(noise: &CpuTensor, memory: Option<MemoryBudget>) -> GenerateRequest<'_> {
    GenerateRequest { memory, ..common::medium_request(noise) }
}

#[test]
fn a_quarter_of_the_weights_streams_to_the_same_video() {
    let dir = std::env::temp_dir().join(format!("orrery-medium-{}", std::process::id()));
    let tokenizer = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/cosmos_t2w_tiny/tokenizer");
    let written = write_synthetic_pipeline(&dir, &SyntheticSize::MEDIUM, &tokenizer, 7).unwrap();
    let pipeline = CosmosPipeline::load(&dir).unwrap();
    let latent = pipeline.latent_shape(64, 96, 17).unwrap();
    assert_eq!(latent, [1, 16, 3, 8, 12]);
    let noise = CpuTensor::from_vec(latent.to_vec(), standard_normal(latent.iter().product(), 3));

    let resident = pipeline.generate(&request(&noise, None)).unwrap();
    assert!(resident.stream.is_none());
    let plan = resident.memory.clone();
    assert!(plan.weight_bytes <= written && plan.weight_bytes > written / 2, "{} of {written}", plan.weight_bytes);
    let budget = plan.weight_bytes / 4 + plan.activation_bytes;
    println!(
        "weights {} B, activations {} B, smallest budget {} B, budget {budget} B",
        plan.weight_bytes, plan.activation_bytes, plan.min_budget
    );
    let memory = MemoryBudget::new(budget);
    let streamed = pipeline.generate(&request(&noise, Some(memory))).unwrap();
    let stats = streamed.stream.clone().expect("streamed");
    let timeline = streamed.memory.timeline.as_ref().unwrap();
    assert!(timeline.capacity <= plan.weight_bytes / 4);
    assert_eq!(stats.bytes_loaded, timeline.bytes_loaded());
    // Two prompts, 3 steps × 2 branches, one decode: the transformer's weights read 6 times.
    assert_eq!(streamed.invocations.len(), 2 + 6 + 1);
    assert_eq!(streamed.decoded_raw.to_f32_vec(), resident.decoded_raw.to_f32_vec(), "bit-identical video");
    for (a, b) in streamed.step_latents.iter().zip(&resident.step_latents) {
        assert_eq!(a.to_f32_vec(), b.to_f32_vec());
    }

    let too_small = MemoryBudget { bytes: plan.min_budget - 1, ..memory };
    let err = pipeline.generate(&request(&noise, Some(too_small))).err().expect("refused").to_string();
    assert!(err.contains(&plan.min_budget.to_string()), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_quarter_of_the_tiny_weights_splits_the_biggest_convolution_and_gives_the_same_bits() {
    let dir = common::fixture("cosmos_t2w_tiny");
    let run = common::Run::open(&dir, "run");
    let pipeline = CosmosPipeline::load(&dir).unwrap();
    let noise = run.get("noise");
    let progress = |_| {};
    let resident = pipeline.generate(&run.request(&noise, &progress)).unwrap();
    let plan = resident.memory.clone();
    let budget = plan.weight_bytes / 4 + plan.activation_bytes;
    println!(
        "weights {} B, activations {} B, unsplit minimum {} B, budget {budget} B",
        plan.weight_bytes, plan.activation_bytes, plan.min_budget
    );
    // One weight is more than a quarter of all of them, so no whole-weight ring fits.
    assert!(plan.min_budget > budget);
    let request = GenerateRequest { memory: Some(MemoryBudget::new(budget)), ..run.request(&noise, &progress) };
    let streamed = pipeline.generate(&request).unwrap();
    let split = streamed.memory.weight_split.expect("the plans split a convolution");
    let timeline = streamed.memory.timeline.as_ref().unwrap();
    assert!(timeline.capacity <= plan.weight_bytes / 4, "ring {} B", timeline.capacity);
    assert!(split <= timeline.capacity);
    let sliced: Vec<&str> = timeline.loads.iter().map(|l| l.name.as_str()).filter(|n| n.contains("@rows[")).collect();
    assert!(sliced.iter().any(|n| n.starts_with("decoder.conv_out")), "{sliced:?}");
    for (i, (a, b)) in streamed.step_latents.iter().zip(&resident.step_latents).enumerate() {
        assert_eq!(a.to_f32_vec(), b.to_f32_vec(), "latents after step {i}");
    }
    let bits = |t: &CpuTensor| t.to_f32_vec().iter().map(|v| v.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(&streamed.decoded_raw), bits(&resident.decoded_raw), "bit-identical video");
    assert_eq!(streamed.stream.unwrap().bytes_loaded, timeline.bytes_loaded());

    // Below what the most-split plans need, the run is refused stating that minimum.
    let err = pipeline
        .generate(&GenerateRequest { memory: Some(MemoryBudget::new(budget / 3)), ..run.request(&noise, &progress) })
        .err()
        .expect("refused")
        .to_string();
    assert!(err.contains("memory budget") && err.contains("--memory-budget"), "{err}");
}
