//! The denoising loop, apart from the models: given a network `F(c_in·x, c_noise)` it runs the
//! σ grid with classifier-free guidance, Video2World's pinned condition frames and the update,
//! in the operation order of the reference the schedule names (cosmos-reference §4.2–4.3):
//!
//! - diffusers (`DiffusersEdm`): each branch's denoised estimate `x0 = c_skip·x + c_out·F`,
//!   condition frames pinned to the conditioning latents, guidance on the two `x0`, an Euler
//!   step from the sample `x`;
//! - cosmos-predict1 (`Predict1`): guidance on the network outputs, `x0` from the network's
//!   input sample (condition frames already replaced), pinned, an Euler step from that input,
//!   and the step to σ = 0 returns `x0` itself.
//!
//! Both references run the transformer in its checkpoint's dtype, so its input, timestep and
//! output pass through that dtype; cosmos-predict1 also keeps the sample between steps and the
//! guidance arithmetic in it. [`Precision::Bf16`] rounds those values to bfloat16, so that a
//! bf16 checkpoint sees what its reference gives it, while orrery's arithmetic stays f32.

use crate::sampler::{c_in, Preconditioning};
use crate::{classifier_free_guidance, euler_step, PipelineError, SamplerKind, Schedule};
use half::bf16;

/// The dtype the reference runs the transformer in (its checkpoint's).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Precision {
    F32,
    Bf16,
}

impl Precision {
    fn round(self, v: f32) -> f32 {
        match self {
            Precision::F32 => v,
            Precision::Bf16 => bf16::from_f32(v).to_f32(),
        }
    }

    fn round_all(self, values: &mut [f32]) {
        if self == Precision::Bf16 {
            values.iter_mut().for_each(|v| *v = bf16::from_f32(*v).to_f32());
        }
    }
}

/// Video2World's given frames, held at their conditioning latents (cosmos-reference §4.3).
pub(crate) struct Pinned<'a> {
    /// The conditioning latents in the model's space, the whole latent shape.
    pub latents: &'a [f32],
    /// Latent frames the input covers (the first ones).
    pub frames: usize,
    /// The σ the given frames are noised to; they are pinned while it is below the step's σ.
    pub augment_sigma: f32,
    /// Standard normal noise for step `i`, conditional (`false`) or unconditional branch.
    pub augment_noise: &'a dyn Fn(usize, bool) -> Vec<f32>,
}

/// Everything the loop needs besides the network.
pub(crate) struct Sampling<'a> {
    pub schedule: &'a Schedule,
    pub guidance: f32,
    /// [1, C, T, h, w]: the latents' shape.
    pub shape: [usize; 5],
    pub precision: Precision,
    pub pinned: Option<Pinned<'a>>,
}

/// One network input of a step: the scaled sample `c_in·x`, and whether it is for the
/// negative prompt (the unconditional branch).
pub(crate) struct Branch {
    pub input: Vec<f32>,
    pub uncond: bool,
}

/// The network: `F` for every branch of a step at timestep `c_noise`, in the order given. A
/// step's branches are independent, so a network may run them at once (CFG parallelism).
pub(crate) type Network<'a> = dyn Fn(Vec<Branch>, f32) -> Result<Vec<Vec<f32>>, PipelineError> + 'a;

/// Told after step `i` with its σ and the new sample; an error (an interrupt) ends the loop.
pub(crate) type AfterStep<'a> = dyn FnMut(usize, f32, &[f32]) -> Result<(), PipelineError> + 'a;

/// Transformer evaluations per step: 2 when the unconditional branch runs too.
pub(crate) fn branches(kind: SamplerKind, guidance: f32) -> usize {
    let uncond = match kind {
        // diffusers: `do_classifier_free_guidance = guidance_scale > 1`.
        SamplerKind::DiffusersEdm => guidance > 1.0,
        // cosmos-predict1 always evaluates both and combines `Fc + g·(Fc − Fu)`.
        SamplerKind::Predict1 => guidance != 0.0,
    };
    1 + usize::from(uncond)
}

impl Sampling<'_> {
    fn uncond_needed(&self) -> bool {
        branches(self.schedule.kind, self.guidance) == 2
    }

    /// The sample the network sees in step `i`: `x` with, while pinning, the given frames
    /// replaced by the conditioning latents noised to the augment σ and rescaled to σ.
    fn network_sample(&self, x: &[f32], i: usize, p: &Preconditioning, uncond: bool) -> Vec<f32> {
        let mut sample = x.to_vec();
        if let Some(pin) = self.pinned.as_ref().filter(|c| c.augment_sigma < p.sigma) {
            let noise = (pin.augment_noise)(i, uncond);
            let rescale = c_in(pin.augment_sigma, self.schedule.sigma_data) / p.c_in;
            for given in self.given_ranges(pin.frames) {
                for ((s, &z), &e) in
                    sample[given.clone()].iter_mut().zip(&pin.latents[given.clone()]).zip(&noise[given])
                {
                    *s = (z + e * pin.augment_sigma) * rescale;
                }
            }
        }
        sample
    }

    /// The index ranges of the first `frames` latent frames, one per channel.
    fn given_ranges(&self, frames: usize) -> impl Iterator<Item = std::ops::Range<usize>> {
        let [_, channels, t, h, w] = self.shape;
        let per_channel = t * h * w;
        (0..channels).map(move |c| c * per_channel..c * per_channel + frames * h * w)
    }

    /// Sets the given frames of a denoised estimate to the conditioning latents while pinning.
    fn pin(&self, x0: &mut [f32], p: &Preconditioning) {
        if let Some(pin) = self.pinned.as_ref().filter(|c| c.augment_sigma < p.sigma) {
            for given in self.given_ranges(pin.frames) {
                x0[given.clone()].copy_from_slice(&pin.latents[given]);
            }
        }
    }

    /// The network's outputs for the step's samples (the conditional one, then the
    /// unconditional one when guidance needs it): `F(c_in·sample, c_noise)`, through its dtype.
    fn evaluate(
        &self,
        network: &Network,
        samples: &[&[f32]],
        p: &Preconditioning,
    ) -> Result<Vec<Vec<f32>>, PipelineError> {
        let branches = samples
            .iter()
            .enumerate()
            .map(|(b, sample)| {
                let mut input = vec![0f32; sample.len()];
                p.scale_input(sample, &mut input);
                self.precision.round_all(&mut input);
                Branch { input, uncond: b == 1 }
            })
            .collect();
        let mut fs = network(branches, self.precision.round(p.c_noise))?;
        if fs.len() != samples.len() {
            return Err(PipelineError::Invalid(format!(
                "the network gave {} outputs for {} branches",
                fs.len(),
                samples.len()
            )));
        }
        fs.iter_mut().for_each(|f| self.precision.round_all(f));
        Ok(fs)
    }

    /// Runs every step from the initial sample `x` (already scaled by the schedule's noise
    /// scale); returns the final sample.
    pub(crate) fn run(
        &self,
        mut x: Vec<f32>,
        network: &Network,
        after_step: &mut AfterStep,
    ) -> Result<Vec<f32>, PipelineError> {
        let n = x.len();
        let (mut x0, mut x0_uncond, mut guided) = (vec![0f32; n], vec![0f32; n], vec![0f32; n]);
        for i in 0..self.schedule.steps() {
            let p = self.schedule.preconditioning(i);
            let (sigma, sigma_next) = (self.schedule.sigmas[i], self.schedule.sigmas[i + 1]);
            match self.schedule.kind {
                SamplerKind::DiffusersEdm => {
                    let cond = self.network_sample(&x, i, &p, false);
                    let uncond = self.uncond_needed().then(|| self.network_sample(&x, i, &p, true));
                    let samples: Vec<&[f32]> = std::iter::once(&cond).chain(&uncond).map(|s| s.as_slice()).collect();
                    let fs = self.evaluate(network, &samples, &p)?;
                    p.denoised(&x, &fs[0], &mut x0);
                    self.pin(&mut x0, &p);
                    if let Some(f) = fs.get(1) {
                        p.denoised(&x, f, &mut x0_uncond);
                        self.pin(&mut x0_uncond, &p);
                        classifier_free_guidance(&x0, &x0_uncond, self.guidance, &mut guided);
                        std::mem::swap(&mut x0, &mut guided);
                    }
                    euler_step(&mut x, &x0, sigma, sigma_next);
                }
                SamplerKind::Predict1 => {
                    self.precision.round_all(&mut x);
                    let sample_for = |uncond: bool| {
                        let mut sample = self.network_sample(&x, i, &p, uncond);
                        self.precision.round_all(&mut sample);
                        sample
                    };
                    let mut sample = sample_for(false);
                    let uncond = self.uncond_needed().then(|| sample_for(true));
                    let samples: Vec<&[f32]> = std::iter::once(&sample).chain(&uncond).map(|s| s.as_slice()).collect();
                    let mut fs = self.evaluate(network, &samples, &p)?.into_iter();
                    let mut f = fs.next().expect("one output per branch");
                    if let Some(f_uncond) = fs.next() {
                        let r = |v: f32| self.precision.round(v);
                        let g = self.guidance;
                        f.iter_mut().zip(&f_uncond).for_each(|(c, &u)| *c = r(*c + r(g * r(*c - u))));
                    }
                    p.denoised(&sample, &f, &mut x0);
                    self.pin(&mut x0, &p);
                    if sigma_next == 0.0 {
                        x.copy_from_slice(&x0);
                    } else {
                        euler_step(&mut sample, &x0, sigma, sigma_next);
                        x = sample;
                    }
                    self.precision.round_all(&mut x);
                }
            }
            after_step(i, sigma, &x)?;
        }
        Ok(x)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stand-in network: a fixed mix of its input and the timestep, different per branch.
    fn toy_network(branches: Vec<Branch>, t: f32) -> Result<Vec<Vec<f32>>, PipelineError> {
        let one = |b: &Branch| {
            let k = if b.uncond { 0.3 } else { -0.7 };
            b.input.iter().enumerate().map(|(j, v)| k * v + 0.1 * t + 0.01 * j as f32).collect()
        };
        Ok(branches.iter().map(one).collect())
    }

    fn run(schedule: &Schedule, precision: Precision, guidance: f32) -> (Vec<f32>, Vec<Vec<f32>>) {
        let shape = [1, 2, 1, 2, 3];
        let x: Vec<f32> = (0..12).map(|j| ((j * 7 % 5) as f32 - 2.0) * schedule.init_noise_scale).collect();
        let sampling = Sampling { schedule, guidance, shape, precision, pinned: None };
        let mut steps = Vec::new();
        let out = sampling
            .run(x, &toy_network, &mut |_, _, x: &[f32]| {
                steps.push(x.to_vec());
                Ok(())
            })
            .unwrap();
        (out, steps)
    }

    #[test]
    fn predict1_ends_on_the_denoised_estimate_and_bf16_keeps_every_state_representable() {
        let schedule = Schedule::predict1(3).unwrap();
        let (f32_out, _) = run(&schedule, Precision::F32, 7.0);
        let (bf16_out, bf16_steps) = run(&schedule, Precision::Bf16, 7.0);
        for state in &bf16_steps {
            assert!(state.iter().all(|&v| bf16::from_f32(v).to_f32() == v), "{state:?}");
        }
        // Rounding the state to 8 mantissa bits moves the result by a few bf16 ulps at most.
        let scale = f32_out.iter().fold(0f32, |m, v| m.max(v.abs()));
        let err = f32_out.iter().zip(&bf16_out).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        assert!(err / scale < 0.05 && err > 0.0, "bf16 vs f32: {err} of {scale}");
    }

    #[test]
    fn predict1_guides_the_network_outputs_like_the_diffusers_loop_guides_x0() {
        // Guidance is linear, so guiding F or x0 agrees up to rounding, and both grids end the
        // same way when σ_next = 0.
        let schedule = Schedule::predict1(4).unwrap();
        let diffusers = Schedule { kind: SamplerKind::DiffusersEdm, ..schedule.clone() };
        let (a, _) = run(&schedule, Precision::F32, 7.0);
        let (b, _) = run(&diffusers, Precision::F32, 7.0);
        let scale = a.iter().fold(0f32, |m, v| m.max(v.abs()));
        let err = a.iter().zip(&b).fold(0f32, |m, (x, y)| m.max((x - y).abs()));
        assert!(err / scale < 1e-5, "{err} of {scale}");
        // Guidance 1 is still guidance for Predict1 (`Fc + (Fc − Fu)`), not for diffusers.
        let (p1, _) = run(&schedule, Precision::F32, 1.0);
        let (d1, _) = run(&diffusers, Precision::F32, 1.0);
        assert!(p1.iter().zip(&d1).any(|(x, y)| (x - y).abs() > 1e-3));
    }
}
