//! The samplers against diffusers' `EDMEulerScheduler` and cosmos-predict1's grid, from
//! `tools/reference/make_sampler_fixtures.py`. σ grids, timesteps and EDM scalars within 1e-6
//! relative (per value); two guided steps of the Text2World loop within 1e-6 relative
//! (max|out − ref| / max|ref|).

use orrery_pipeline::{classifier_free_guidance, euler_step, EdmSchedulerConfig, Schedule};
use serde_json::Value;

fn fixture() -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/sampler.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn floats(v: &Value) -> Vec<f32> {
    v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect()
}

fn assert_close(got: &[f32], want: &[f32], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let mut worst = 0f64;
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let err = if g == w { 0.0 } else { (g - w).abs() as f64 / (w.abs() as f64).max(1e-30) };
        assert!(err <= 1e-6, "{what}[{i}]: {g} vs {w} ({err:e})");
        worst = worst.max(err);
    }
    println!("{what}: largest relative difference {worst:.1e}");
}

#[test]
fn diffusers_grids_timesteps_and_scalars() {
    let f = fixture();
    for case in ["cosmos_36", "cosmos_5", "default_10"] {
        let c = &f[case];
        let config = EdmSchedulerConfig::from_json(&c["config"]).unwrap();
        let steps = c["steps"].as_u64().unwrap() as usize;
        let s = Schedule::diffusers(&config, steps).unwrap();
        assert_close(&s.sigmas, &floats(&c["sigmas"]), &format!("{case} sigmas"));
        assert_eq!(s.init_noise_scale as f64, c["init_noise_scale"].as_f64().unwrap());
        let p: Vec<_> = (0..s.steps()).map(|i| s.preconditioning(i)).collect();
        assert_close(
            &p.iter().map(|p| p.c_noise).collect::<Vec<_>>(),
            &floats(&c["timesteps"]),
            &format!("{case} timesteps"),
        );
        assert_close(&p.iter().map(|p| p.c_in).collect::<Vec<_>>(), &floats(&c["c_in"]), &format!("{case} c_in"));
        assert_close(&p.iter().map(|p| p.c_skip).collect::<Vec<_>>(), &floats(&c["c_skip"]), &format!("{case} c_skip"));
        assert_close(&p.iter().map(|p| p.c_out).collect::<Vec<_>>(), &floats(&c["c_out"]), &format!("{case} c_out"));
    }
}

#[test]
fn predict1_grid() {
    let f = fixture();
    let s = Schedule::predict1(35).unwrap();
    assert_close(&s.sigmas, &floats(&f["predict1_35"]["sigmas"]), "predict1 sigmas");
    // The values cosmos-reference §4.2 lists, at their printed precision.
    for (i, v) in [(0, 80.0), (1, 67.126), (2, 56.070), (31, 0.0029506), (32, 0.0013425), (33, 0.0005527), (34, 0.0002)]
    {
        let rel = ((s.sigmas[i] as f64 - v) / v).abs();
        assert!(rel < 5e-5, "σ_{i} = {} vs {v}", s.sigmas[i]);
    }
    assert_eq!(s.sigmas[35], 0.0);
}

#[test]
fn two_guided_text2world_steps() {
    let f = fixture();
    let g = &f["guided"];
    let config = EdmSchedulerConfig::from_json(&f["cosmos_5"]["config"]).unwrap();
    let s = Schedule::diffusers(&config, 5).unwrap();
    let guidance = g["guidance"].as_f64().unwrap() as f32;
    let mut latents = floats(&g["latents0"]);
    for (i, step) in g["steps"].as_array().unwrap().iter().enumerate() {
        let p = s.preconditioning(i);
        let mut scaled = vec![0f32; latents.len()];
        p.scale_input(&latents, &mut scaled);
        assert_close(&scaled, &floats(&step["scaled_input"]), &format!("step {i} input"));
        let (cond, uncond) = (floats(&step["cond"]), floats(&step["uncond"]));
        let (mut x0c, mut x0u, mut guided) = (vec![0f32; cond.len()], vec![0f32; cond.len()], vec![0f32; cond.len()]);
        p.denoised(&latents, &cond, &mut x0c);
        p.denoised(&latents, &uncond, &mut x0u);
        classifier_free_guidance(&x0c, &x0u, guidance, &mut guided);
        euler_step(&mut latents, &guided, s.sigmas[i], s.sigmas[i + 1]);
        let want = floats(&step["latents"]);
        let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
        let err = latents.iter().zip(&want).fold(0f32, |m, (a, b)| m.max((a - b).abs())) / scale;
        println!("guided step {i}: relative error {err:.1e}");
        assert!(err <= 1e-6, "step {i}: relative error {err:e}");
    }
}
