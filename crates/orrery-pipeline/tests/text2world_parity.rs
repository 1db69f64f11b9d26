//! Text2World against diffusers' `CosmosTextToWorldPipeline` on a tiny random pipeline
//! (`tools/reference/make_cosmos_pipeline_fixtures.py`): same prompt and negative prompt, text
//! length 512, the same injected noise, 3 steps, guidance 7. The prompt embeddings, the latents
//! after every step and the decoder's raw output within 1e-4 relative
//! (max|out − ref| / max|ref|).

mod common;

use common::{fixture, rel_err, Run};
use orrery_cpu::CpuTensor;
use orrery_pipeline::{video_frames_u8, CosmosPipeline, GenerateRequest, Stage};

#[test]
fn text2world_matches_diffusers() {
    let dir = fixture("cosmos_t2w_tiny");
    let run = Run::open(&dir, "run");
    let get = |name: &str| run.get(name);
    let pipeline = CosmosPipeline::load(&dir).unwrap();
    assert_eq!(pipeline.skipped, vec!["safety_checker".to_string()]);
    let noise = get("noise");
    let stages = std::cell::RefCell::new(Vec::new());
    let progress = |stage| stages.borrow_mut().push(stage);
    let request = run.request(&noise, &progress);
    let out = pipeline.generate(&request).unwrap();
    let mut errors = vec![
        ("prompt_embeds", rel_err(&out.prompt_embeds, &get("prompt_embeds"))),
        ("negative_prompt_embeds", rel_err(&out.negative_prompt_embeds, &get("negative_prompt_embeds"))),
    ];
    assert_eq!(out.sigmas, get("sigmas").to_f32_vec());
    let step_names: Vec<String> = (0..out.step_latents.len()).map(|i| format!("step{i}.latents")).collect();
    for (name, latents) in step_names.iter().zip(&out.step_latents) {
        errors.push((name, rel_err(latents, &get(name))));
    }
    errors.push(("decoded_raw", rel_err(&out.decoded_raw, &get("decoded_raw"))));
    for (what, err) in &errors {
        println!("{what}: relative error {err:.2e}");
    }
    for (what, err) in errors {
        assert!(err <= 1e-4, "{what}: {err:e}");
    }
    assert_eq!(out.step_latents.len(), 3);
    // Progress: text, each step with its σ, decode.
    let stages = stages.borrow();
    assert_eq!(stages.len(), 5);
    assert!(matches!(stages[0], Stage::TextEncoded { .. }) && matches!(stages[4], Stage::Decoded { .. }));
    assert!(matches!(stages[1], Stage::Step { step: 0, steps: 3, sigma, .. } if sigma == out.sigmas[0]));

    // 8-bit frames: diffusers' conversion of its own decode reproduced exactly; on orrery's
    // decode at most one level off.
    let want: Vec<u8> = get("frames_uint8").to_f32_vec().iter().map(|&v| v as u8).collect();
    let (f, h, w) = (request.frames, request.height, request.width);
    let from_reference: Vec<u8> = video_frames_u8(&get("decoded_raw").to_f32_vec(), f, h, w).concat();
    assert_eq!(from_reference, want, "the uint8 conversion of the reference decode");
    let ours: Vec<u8> = video_frames_u8(&out.decoded_raw.to_f32_vec(), f, h, w).concat();
    let worst = ours.iter().zip(&want).map(|(a, b)| a.abs_diff(*b)).max().unwrap();
    println!("frames: at most {worst} level(s) from diffusers'");
    assert!(worst <= 1);
}

#[test]
fn bad_requests_and_folders_are_refused_with_the_reason() {
    let dir = fixture("cosmos_t2w_tiny");
    let pipeline = CosmosPipeline::load(&dir).unwrap();
    let noise = CpuTensor::from_vec(vec![1, 4, 2, 4, 6], vec![0f32; 192]);
    let request = |height, frames, noise| GenerateRequest {
        prompt: "a cube",
        negative_prompt: None,
        height,
        width: 48,
        frames,
        steps: 1,
        guidance: 7.0,
        fps: 30.0,
        sampler: orrery_pipeline::SamplerKind::DiffusersEdm,
        noise,
        max_text_len: 16,
        threads: 1,
        progress: &|_| {},
        condition: None,
        memory: None,
        stop: None,
        cfg_parallel: orrery_pipeline::CfgParallel::Off,
        model_parallel: orrery_pipeline::ModelParallel::Off,
    };
    let err = |r: GenerateRequest| pipeline.generate(&r).err().expect("refused").to_string();
    assert!(err(request(30, 9, &noise)).contains("multiples of 16"));
    assert!(err(request(32, 8, &noise)).contains("1 + 8·k"));
    let small = CpuTensor::from_vec(vec![1, 4, 1, 4, 6], vec![0f32; 96]);
    assert!(err(request(32, 9, &small)).contains("initial noise"));
    // A folder that is not a pipeline, and one missing a component.
    let e = CosmosPipeline::load(&dir.join("vae")).err().expect("not a pipeline").to_string();
    assert!(e.contains("model_index.json"), "{e}");
    let partial = std::env::temp_dir().join(format!("orrery-t2w-partial-{}", std::process::id()));
    std::fs::create_dir_all(&partial).unwrap();
    std::fs::copy(dir.join("model_index.json"), partial.join("model_index.json")).unwrap();
    let e = CosmosPipeline::load(&partial).err().expect("missing components").to_string();
    assert!(e.contains("no `vae` component"), "{e}");
    std::fs::remove_dir_all(&partial).unwrap();
}
