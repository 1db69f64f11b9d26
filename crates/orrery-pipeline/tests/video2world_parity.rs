//! Video2World against diffusers' `CosmosVideoToWorldPipeline` on a tiny random pipeline
//! (`tools/reference/make_cosmos_v2w_fixtures.py`): 1 and 9 input frames already at the output
//! size (17 output frames: 1 resp. 2 given latent frames), (a) augment σ 0.001 with diffusers'
//! augment noise injected, (b) augment σ 0. Latents after every step and the decoder's raw
//! output within 1e-4 relative (max|out − ref| / max|ref|); the same runs within the smallest
//! memory budget (weights streamed) bit-identical to the resident ones.

mod common;

use common::{fixture, rel_err, Run};
use orrery_pipeline::{Condition, CosmosPipeline, MemoryBudget};

#[test]
fn video2world_matches_diffusers() {
    let dir = fixture("cosmos_v2w_tiny");
    let pipeline = CosmosPipeline::load(&dir).unwrap();
    assert!(pipeline.video_to_world);
    for case in ["f1_sigma0.001", "f1_sigma0", "f9_sigma0.001", "f9_sigma0"] {
        let run = Run::open(&dir, &format!("run_{case}"));
        let get = |name: &str| run.get(name);
        let (noise, video) = (get("noise"), get("video"));
        let augment_noise = |step: usize, uncond: bool| {
            get(&format!("augment_noise.step{step}.{}", if uncond { "uncond" } else { "cond" })).to_f32_vec()
        };
        let mut request = run.request(&noise, &|_| {});
        request.condition = Some(Condition {
            video: &video,
            augment_sigma: run.settings["augment_sigma"].as_f64().unwrap() as f32,
            augment_noise: &augment_noise,
        });
        let out = pipeline.generate(&request).unwrap();
        let mut worst = 0f64;
        for (i, latents) in out.step_latents.iter().enumerate() {
            let err = rel_err(latents, &get(&format!("step{i}.latents")));
            println!("{case} step{i}.latents: {err:.2e}");
            worst = worst.max(err);
        }
        let err = rel_err(&out.decoded_raw, &get("decoded_raw"));
        println!("{case} decoded_raw: {err:.2e}");
        assert!(worst.max(err) <= 1e-4, "{case}: {}", worst.max(err));

        // Within the smallest memory budget the weights stream (the video encoder's run
        // included in the timeline, before the transformer's), and the result is the same.
        request.memory = Some(MemoryBudget::new(out.memory.min_budget));
        let streamed = pipeline.generate(&request).unwrap();
        assert!(streamed.stream.is_some(), "{case}: streamed");
        assert_eq!(streamed.invocations.iter().filter(|s| s.label == "vae.encode").count(), 1);
        assert_eq!(streamed.decoded_raw.to_f32_vec(), out.decoded_raw.to_f32_vec(), "{case}: bit-identical");
    }
}
