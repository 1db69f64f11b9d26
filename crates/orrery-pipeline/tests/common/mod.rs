//! Shared by the pipeline parity tests: reading a fixture run's settings and tensors, and the
//! relative error they are judged by.

#![allow(dead_code)]

use orrery_cpu::CpuTensor;
use orrery_formats::WeightSource;
use orrery_pipeline::GenerateRequest;
use std::path::{Path, PathBuf};

pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

/// max|got − want| / max|want|.
pub fn rel_err(got: &CpuTensor, want: &CpuTensor) -> f64 {
    assert_eq!(got.shape(), want.shape());
    let (g, w) = (got.to_f32_vec(), want.to_f32_vec());
    let scale = w.iter().fold(0f64, |m, v| m.max(v.abs() as f64));
    g.iter().zip(&w).fold(0f64, |m, (a, b)| m.max((a - b).abs() as f64)) / scale
}

/// A reference run: its settings (`run*.json`) and tensors (`run*.safetensors`).
pub struct Run {
    pub settings: serde_json::Value,
    tensors: Box<dyn WeightSource>,
}

impl Run {
    pub fn open(dir: &Path, stem: &str) -> Run {
        let text = std::fs::read_to_string(dir.join(format!("{stem}.json"))).unwrap();
        Run {
            settings: serde_json::from_str(&text).unwrap(),
            tensors: orrery_formats::open_weights(dir.join(format!("{stem}.safetensors"))).unwrap(),
        }
    }

    pub fn get(&self, name: &str) -> CpuTensor {
        orrery_runtime::tensor_from_source(self.tensors.as_ref(), name).unwrap()
    }

    fn n(&self, key: &str) -> usize {
        self.settings[key].as_u64().unwrap() as usize
    }

    /// The request the reference run made (text length 512, no condition), with `noise`.
    pub fn request<'a>(
        &'a self,
        noise: &'a CpuTensor,
        progress: &'a dyn Fn(orrery_pipeline::Stage),
    ) -> GenerateRequest<'a> {
        GenerateRequest {
            prompt: self.settings["prompt"].as_str().unwrap(),
            negative_prompt: self.settings["negative_prompt"].as_str(),
            height: self.n("height"),
            width: self.n("width"),
            frames: self.n("num_frames"),
            steps: self.n("num_inference_steps"),
            guidance: self.settings["guidance_scale"].as_f64().unwrap() as f32,
            fps: self.settings["fps"].as_f64().unwrap() as f32,
            sampler: match self.settings["sampler"].as_str() {
                Some("predict1") => orrery_pipeline::SamplerKind::Predict1,
                _ => orrery_pipeline::SamplerKind::DiffusersEdm,
            },
            noise,
            max_text_len: 512,
            threads: 2,
            progress,
            condition: None,
            memory: None,
            stop: None,
            cfg_parallel: orrery_pipeline::CfgParallel::Off,
            model_parallel: orrery_pipeline::ModelParallel::Off,
        }
    }
}

/// The medium pipeline's run used by several tests: 17 × 64 × 96, 3 steps, guidance 7, text
/// length 64, 2 threads, no budget and no parallelism.
pub fn medium_request(noise: &CpuTensor) -> GenerateRequest<'_> {
    GenerateRequest {
        prompt: "a robot arm stacks red cubes",
        negative_prompt: Some("blurry"),
        height: 64,
        width: 96,
        frames: 17,
        steps: 3,
        guidance: 7.0,
        fps: 24.0,
        sampler: orrery_pipeline::SamplerKind::DiffusersEdm,
        noise,
        max_text_len: 64,
        threads: 2,
        progress: &|_| {},
        condition: None,
        memory: None,
        stop: None,
        cfg_parallel: orrery_pipeline::CfgParallel::Off,
        model_parallel: orrery_pipeline::ModelParallel::Off,
    }
}
