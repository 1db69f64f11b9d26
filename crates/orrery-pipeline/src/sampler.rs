//! The EDM sampler: the σ grid, the preconditioning of the network's input and output, the
//! Euler update and classifier-free guidance, in f32 arithmetic in the reference's operation
//! order (diffusers' `EDMEulerScheduler`, cosmos-reference §4.1–4.2), so that a run with the
//! same noise lands on the reference's latents.

use crate::{EdmSchedulerConfig, FinalSigmas, PipelineError, SigmaSchedule};

/// Which reference the sampling follows (their grids and initial noise differ).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SamplerKind {
    /// diffusers' Cosmos pipelines: `EDMEulerScheduler` with the folder's scheduler config.
    DiffusersEdm,
    /// NVIDIA's cosmos-predict1: diffusers 0.32's `EDMEulerScheduler` with σ from 80 to 0.0002
    /// on an f32 ramp, a final 0, and initial noise × √(80² + 1).
    Predict1,
}

/// The σ of every step, plus the σ after the last one, as the f32 values the reference uses.
#[derive(Clone, Debug, PartialEq)]
pub struct Schedule {
    pub kind: SamplerKind,
    /// `steps + 1` values, decreasing; the last is 0 or σ_min.
    pub sigmas: Vec<f32>,
    pub sigma_data: f32,
    /// What standard normal initial noise is multiplied by.
    pub init_noise_scale: f32,
}

/// The EDM scalars at one σ (f32, computed in the reference's order).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Preconditioning {
    pub sigma: f32,
    /// Scales the noisy sample into the network: `1 / √(σ² + σd²)`.
    pub c_in: f32,
    /// `σd² / (σ² + σd²)`: the sample's share of the denoised estimate.
    pub c_skip: f32,
    /// `σ·σd / √(σ² + σd²)`: the network output's share.
    pub c_out: f32,
    /// The network's timestep input: `0.25·ln σ`.
    pub c_noise: f32,
}

/// The Karras grid of `steps` σ from σ_max down to σ_min over a float64 ramp, rounded to f32
/// at the end (what diffusers' `set_timesteps` computes).
fn karras_f64(steps: usize, sigma_min: f64, sigma_max: f64, rho: f64) -> Vec<f32> {
    let (lo, hi) = (sigma_min.powf(1.0 / rho), sigma_max.powf(1.0 / rho));
    ramp_f64(steps).into_iter().map(|r| (hi + r * (lo - hi)).powf(rho) as f32).collect()
}

/// torch's `linspace(0, 1, n)` in float64: the first half counts up from 0, the second half
/// down from 1 (so both ends are exact).
fn ramp_f64(n: usize) -> Vec<f64> {
    if n == 1 {
        return vec![0.0];
    }
    let step = 1.0 / (n - 1) as f64;
    (0..n).map(|i| if i < n / 2 { i as f64 * step } else { 1.0 - (n - 1 - i) as f64 * step }).collect()
}

/// The same in float32 arithmetic (diffusers 0.32, which cosmos-predict1 pins): an f32 ramp,
/// `σmax^(1/ρ)` and `σmin^(1/ρ) − σmax^(1/ρ)` computed in float64 and rounded to f32 as torch
/// does with Python scalars, then f32 multiply, add and `powf`.
fn karras_f32(steps: usize, sigma_min: f64, sigma_max: f64, rho: f64) -> Vec<f32> {
    let (lo, hi) = (sigma_min.powf(1.0 / rho), sigma_max.powf(1.0 / rho));
    let (hi32, span32, rho32) = (hi as f32, (lo - hi) as f32, rho as f32);
    let step = if steps > 1 { 1.0f32 / (steps - 1) as f32 } else { 0.0 };
    (0..steps)
        .map(|i| {
            let r = if i < steps / 2 { i as f32 * step } else { 1.0 - (steps - 1 - i) as f32 * step };
            (hi32 + r * span32).powf(rho32)
        })
        .collect()
}

impl Schedule {
    /// diffusers' `EDMEulerScheduler.set_timesteps(steps)` for `config`; initial noise × σ_max
    /// (the Cosmos pipelines' `prepare_latents`).
    pub fn diffusers(config: &EdmSchedulerConfig, steps: usize) -> Result<Schedule, PipelineError> {
        if steps == 0 {
            return Err(PipelineError::Invalid("the number of steps must be at least 1".into()));
        }
        let mut sigmas = match config.sigma_schedule {
            SigmaSchedule::Karras => karras_f64(steps, config.sigma_min, config.sigma_max, config.rho),
            SigmaSchedule::Exponential => {
                let (a, b) = (config.sigma_min.ln(), config.sigma_max.ln());
                // linspace(ln σmin, ln σmax, n).exp().flip(0)
                ramp_f64(steps).iter().rev().map(|r| (a + r * (b - a)).exp() as f32).collect()
            }
        };
        let last = match config.final_sigmas {
            FinalSigmas::Zero => 0.0,
            FinalSigmas::SigmaMin => *sigmas.last().expect("steps ≥ 1"),
        };
        sigmas.push(last);
        Ok(Schedule {
            kind: SamplerKind::DiffusersEdm,
            sigmas,
            sigma_data: config.sigma_data as f32,
            init_noise_scale: config.sigma_max as f32,
        })
    }

    /// cosmos-predict1's grid: `steps` Karras σ from 80 to 0.0002 (ρ 7, f32 ramp), then 0;
    /// initial noise × √(80² + 1).
    pub fn predict1(steps: usize) -> Result<Schedule, PipelineError> {
        if steps == 0 {
            return Err(PipelineError::Invalid("the number of steps must be at least 1".into()));
        }
        let mut sigmas = karras_f32(steps, 0.0002, 80.0, 7.0);
        sigmas.push(0.0);
        Ok(Schedule {
            kind: SamplerKind::Predict1,
            sigmas,
            sigma_data: 0.5,
            init_noise_scale: (80f64 * 80.0 + 1.0).sqrt() as f32,
        })
    }

    /// Denoising steps (one network evaluation, two with guidance, each).
    pub fn steps(&self) -> usize {
        self.sigmas.len() - 1
    }

    /// The EDM scalars of step `i`.
    pub fn preconditioning(&self, i: usize) -> Preconditioning {
        let sigma = self.sigmas[i];
        let sd = self.sigma_data;
        // As torch evaluates them on a 0-d f32 tensor: σ², + σd², then sqrt, divisions.
        let total = sigma * sigma + sd * sd;
        let root = total.sqrt();
        Preconditioning {
            sigma,
            c_in: c_in(sigma, sd),
            c_skip: sd * sd / total,
            c_out: sigma * sd / root,
            c_noise: 0.25 * sigma.ln(),
        }
    }
}

/// `1 / √(σ² + σd²)` in f32, in torch's order.
pub(crate) fn c_in(sigma: f32, sigma_data: f32) -> f32 {
    1.0 / (sigma * sigma + sigma_data * sigma_data).sqrt()
}

impl Preconditioning {
    /// `c_in · x`: the network's input for the noisy sample `x`.
    pub fn scale_input(&self, x: &[f32], out: &mut [f32]) {
        out.iter_mut().zip(x).for_each(|(o, v)| *o = v * self.c_in);
    }

    /// The denoised estimate `x0 = c_skip·x + c_out·F` from the network output `f`.
    pub fn denoised(&self, x: &[f32], f: &[f32], out: &mut [f32]) {
        for ((o, &xv), &fv) in out.iter_mut().zip(x).zip(f) {
            *o = self.c_skip * xv + self.c_out * fv;
        }
    }
}

/// One Euler step from σ to σ_next given the denoised estimate `x0`:
/// `x ← x + (x − x0)/σ · (σ_next − σ)` (diffusers' `EDMEulerScheduler.step` with no churn).
pub fn euler_step(x: &mut [f32], x0: &[f32], sigma: f32, sigma_next: f32) {
    let dt = sigma_next - sigma;
    for (xv, &x0v) in x.iter_mut().zip(x0) {
        let derivative = (*xv - x0v) / sigma;
        *xv += derivative * dt;
    }
}

/// `cond + g·(cond − uncond)`, into `out` (on the denoised estimates, as the Cosmos pipelines
/// guide; on the network outputs it is the same combination).
pub fn classifier_free_guidance(cond: &[f32], uncond: &[f32], guidance: f32, out: &mut [f32]) {
    for ((o, &c), &u) in out.iter_mut().zip(cond).zip(uncond) {
        *o = c + guidance * (c - u);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ramps_match_torch_linspace_ends() {
        for n in [1, 2, 5, 35, 36] {
            let r = ramp_f64(n);
            assert_eq!(r[0], 0.0);
            assert_eq!(*r.last().unwrap(), if n == 1 { 0.0 } else { 1.0 });
            assert!(r.windows(2).all(|w| w[0] < w[1]));
        }
    }

    #[test]
    fn grids_start_at_sigma_max_and_end_as_configured() {
        let cosmos = EdmSchedulerConfig { final_sigmas: FinalSigmas::SigmaMin, ..EdmSchedulerConfig::default() };
        let s = Schedule::diffusers(&cosmos, 36).unwrap();
        assert_eq!((s.sigmas.len(), s.sigmas[0], s.sigmas[35], s.sigmas[36]), (37, 80.0, 0.002, 0.002));
        assert_eq!(s.init_noise_scale, 80.0);
        // In f32 arithmetic the ends come out one rounding away from 80 and 0.0002.
        let p = Schedule::predict1(35).unwrap();
        assert!((p.sigmas[0] - 80.0).abs() < 1e-4 && (p.sigmas[34] - 0.0002).abs() < 1e-9 && p.sigmas[35] == 0.0);
        assert_eq!(p.init_noise_scale, 80.00625);
        assert!(Schedule::predict1(0).is_err());
    }

    #[test]
    fn a_step_to_the_same_sigma_leaves_the_sample_and_a_step_to_zero_gives_x0() {
        let x0 = [0.5f32, -1.0, 2.0];
        let mut x = [1.0f32, 2.0, 3.0];
        euler_step(&mut x, &x0, 0.002, 0.002);
        assert_eq!(x, [1.0, 2.0, 3.0]);
        euler_step(&mut x, &x0, 4.0, 0.0);
        assert_eq!(x, x0);
        let mut g = [0f32; 2];
        classifier_free_guidance(&[1.0, 2.0], &[0.5, 3.0], 7.0, &mut g);
        assert_eq!(g, [4.5, -5.0]);
    }
}
