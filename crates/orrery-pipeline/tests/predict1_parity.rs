//! The Predict1 sampler against a float64 NumPy re-implementation of cosmos-predict1's loop
//! (`tools/reference/make_predict1_fixtures.py`) on the tiny random Text2World pipeline: 3
//! steps on the f32-ramp grid ending at 0, noise × √(80² + 1), guidance on the network outputs,
//! an empty negative prompt as a zero embedding, the last step returning x0. The latents after
//! every step and the decoder's raw output within 1e-5 relative (max|out − ref| / max|ref|);
//! the σ grid within 1e-6.

mod common;

use common::{fixture, rel_err, Run};
use orrery_pipeline::CosmosPipeline;

#[test]
fn predict1_matches_the_float64_reference_loop() {
    let run = Run::open(&fixture("predict1_tiny"), "run");
    let pipeline = CosmosPipeline::load(&fixture("cosmos_t2w_tiny")).unwrap();
    let noise = run.get("noise");
    let request = run.request(&noise, &|_| {});
    let out = pipeline.generate(&request).unwrap();

    let want_sigmas = run.get("sigmas").to_f32_vec();
    assert_eq!(out.sigmas.len(), want_sigmas.len());
    for (got, want) in out.sigmas.iter().zip(&want_sigmas) {
        assert!((got - want).abs() <= 1e-6 * want.abs(), "σ {got} vs {want}");
    }
    assert_eq!(*out.sigmas.last().unwrap(), 0.0);
    assert!(out.negative_prompt_embeds.to_f32_vec().iter().all(|&v| v == 0.0), "an empty negative prompt is zero");
    let mut errors = vec![("prompt_embeds".to_string(), rel_err(&out.prompt_embeds, &run.get("prompt_embeds")))];
    for (i, latents) in out.step_latents.iter().enumerate() {
        let name = format!("step{i}.latents");
        errors.push((name.clone(), rel_err(latents, &run.get(&name))));
    }
    errors.push(("decoded_raw".into(), rel_err(&out.decoded_raw, &run.get("decoded_raw"))));
    assert_eq!(out.step_latents.len(), 3);
    for (what, err) in &errors {
        println!("{what}: relative error {err:.2e}");
    }
    for (what, err) in errors {
        assert!(err <= 1e-5, "{what}: {err:e}");
    }
}
