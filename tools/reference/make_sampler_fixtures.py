"""Writes the sampler fixtures for crates/orrery-pipeline/tests/sampler_parity.rs: the σ grids,
timesteps and EDM scalars of diffusers' EDMEulerScheduler for the Cosmos scheduler config (36
and 5 steps) and its defaults (10 steps); cosmos-predict1's grid (diffusers 0.32's f32 Karras
ramp from 80 to 0.0002, 35 steps, then 0), re-computed here with torch f32 ops as that version
did; and two guided steps of CosmosTextToWorldPipeline's loop on random data (the scheduler's
step for x0 of cond and uncond, guidance 7, then the Euler step from the guided x0).

Run from the repository root:
  HF_HUB_OFFLINE=1 .venv-ref/bin/python tools/reference/make_sampler_fixtures.py
"""
import json
import os

import torch
from diffusers import EDMEulerScheduler

OUT = os.path.join("crates", "orrery-pipeline", "tests", "fixtures", "sampler.json")
COSMOS = dict(sigma_min=0.002, sigma_max=80, sigma_data=0.5, sigma_schedule="karras", num_train_timesteps=1000,
              prediction_type="epsilon", rho=7.0, final_sigmas_type="sigma_min")


def floats(t):
    return [float(v) for v in t.reshape(-1).tolist()]


def grid(config, steps):
    s = EDMEulerScheduler(**config)
    s.set_timesteps(steps)
    sig = s.sigmas[:-1]
    sd = s.config.sigma_data
    return {
        "config": config, "steps": steps,
        "sigmas": floats(s.sigmas), "timesteps": floats(s.timesteps),
        "c_in": floats(s._get_conditioning_c_in(sig)),
        "c_skip": floats(sd**2 / (sig**2 + sd**2)),
        "c_out": floats(sig * sd / (sig**2 + sd**2) ** 0.5),
        "init_noise_scale": float(s.config.sigma_max),
    }


def predict1(steps):
    # diffusers 0.32.2 EDMEulerScheduler(sigma_min=0.0002, sigma_max=80, rho=7).set_timesteps:
    # an f32 ramp and f32 arithmetic with Python-float scalars, then a final 0.
    ramp = torch.linspace(0, 1, steps)
    rho = 7.0
    min_inv, max_inv = 0.0002 ** (1 / rho), 80.0 ** (1 / rho)
    sigmas = (max_inv + ramp * (min_inv - max_inv)) ** rho
    return {"steps": steps, "sigmas": floats(torch.cat([sigmas, torch.zeros(1)]))}


def guided_steps():
    g = torch.Generator().manual_seed(3)
    s = EDMEulerScheduler(**COSMOS)
    s.set_timesteps(5)
    latents = torch.randn(2, 16, generator=g) * 80
    record = {"guidance": 7.0, "latents0": floats(latents), "steps": []}
    for i, t in enumerate(s.timesteps[:2]):
        cond, uncond = torch.randn(2, 16, generator=g), torch.randn(2, 16, generator=g)
        scaled = s.scale_model_input(latents, t)
        x0 = s.step(torch.cat([uncond, cond]), t, torch.cat([latents, latents]), return_dict=False)[1]
        s._step_index -= 1
        x0_uncond, x0_cond = x0.chunk(2)
        guided = x0_cond + 7.0 * (x0_cond - x0_uncond)
        latents = s.step(guided, t, latents, return_dict=False, pred_original_sample=guided)[0]
        record["steps"].append({"cond": floats(cond), "uncond": floats(uncond), "scaled_input": floats(scaled),
                                "latents": floats(latents)})
    return record


def main():
    fixture = {
        "cosmos_36": grid(COSMOS, 36),
        "cosmos_5": grid(COSMOS, 5),
        "default_10": grid({}, 10),
        "predict1_35": predict1(35),
        "guided": guided_steps(),
    }
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    with open(OUT, "w") as f:
        json.dump(fixture, f, indent=1)
    print(OUT, os.path.getsize(OUT), "bytes;", "predict1 sigmas", fixture["predict1_35"]["sigmas"][:3], "...",
          fixture["predict1_35"]["sigmas"][-5:])


if __name__ == "__main__":
    main()
