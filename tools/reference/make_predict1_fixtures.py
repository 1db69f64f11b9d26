"""Writes crates/orrery-pipeline/tests/fixtures/predict1_tiny: a 3-step Text2World run of
cosmos-predict1's sampling loop re-implemented in float64 NumPy (cosmos-reference §4.2, "CP1
loop"), on the tiny random pipeline of cosmos_t2w_tiny (written by
make_cosmos_pipeline_fixtures.py).

The loop, written out from the reference rather than taken from a library:
  σ grid  Karras ρ=7 from 80 to 0.0002 over an f32 ramp (diffusers 0.32's EDMEulerScheduler,
          which cosmos-predict1 pins), then 0;
  x       noise × √(80² + 1);
  step i  c_in = 1/√(σ²+σd²), c_skip = σd²/(σ²+σd²), c_out = σ·σd/√(σ²+σd²), c_noise = ¼·ln σ;
          F = Fc + g·(Fc − Fu) on the network outputs (the negative prompt is empty, so Fu uses
          a zero text embedding); x0 = c_skip·x + c_out·F; x ← x + (x − x0)/σ·(σ_next − σ), and
          the step to σ = 0 returns x0 itself.
cosmos-predict1 keeps x in bf16 because its network runs in bf16; these components are f32,
so the loop here is float64 throughout, and the networks (T5, the transformer, the decoder) run
in torch float64.

`run.safetensors` (stored f32): `noise`, `prompt_embeds`, `negative_prompt_embeds`, `sigmas`,
`step{i}.latents`, `decoded_raw`; `run.json` the settings. The pipeline folder is not copied:
the test loads ../cosmos_t2w_tiny.

Run from the repository root:
  HF_HUB_OFFLINE=1 .venv-ref/bin/python tools/reference/make_predict1_fixtures.py
"""
import json
import math
import os

import numpy as np
import torch
from diffusers import AutoencoderKLCosmos, CosmosTransformer3DModel
from safetensors.torch import save_file
from transformers import T5EncoderModel, T5TokenizerFast

PIPELINE = os.path.join("crates", "orrery-pipeline", "tests", "fixtures", "cosmos_t2w_tiny")
OUT = os.path.join("crates", "orrery-pipeline", "tests", "fixtures", "predict1_tiny")
torch.set_num_threads(2)

# diffusers' learnable position embedding asks vector_norm for an f32 result, which torch refuses
# for a float64 input; in this float64 run the norm stays float64.
_vector_norm = torch.linalg.vector_norm


def _float64_vector_norm(x, *args, dtype=None, **kwargs):
    if x.dtype == torch.float64 and dtype == torch.float32:
        dtype = None
    return _vector_norm(x, *args, dtype=dtype, **kwargs)


torch.linalg.vector_norm = _float64_vector_norm

SETTINGS = dict(prompt="A robot arm stacks red cubes on a wooden table.", negative_prompt="",
                height=32, width=48, num_frames=9, num_inference_steps=3, guidance_scale=7.0, fps=24,
                sampler="predict1")
SIGMA_DATA = 0.5


def predict1_sigmas(steps):
    """The grid in the f32 arithmetic torch uses for it, then promoted to float64."""
    rho = 7.0
    hi, lo = 80.0 ** (1 / rho), 0.0002 ** (1 / rho)
    ramp = np.linspace(0, 1, steps, dtype=np.float32) if steps > 1 else np.zeros(1, np.float32)
    sigmas = (np.float32(hi) + ramp * np.float32(lo - hi)) ** np.float32(rho)
    return np.append(sigmas.astype(np.float64), 0.0)


def encode(text_encoder, tokenizer, prompt):
    """T5 embeddings padded to 512 tokens, rows past the prompt zeroed (float64)."""
    t = tokenizer(prompt, padding="max_length", max_length=512, truncation=True, return_tensors="pt")
    with torch.no_grad():
        h = text_encoder(input_ids=t.input_ids, attention_mask=t.attention_mask).last_hidden_state
    h = h.clone()
    h[0, int(t.attention_mask.sum()):] = 0
    return h.numpy()


def main():
    tokenizer = T5TokenizerFast.from_pretrained(os.path.join(PIPELINE, "tokenizer"))
    text_encoder = T5EncoderModel.from_pretrained(os.path.join(PIPELINE, "text_encoder")).double().eval()
    transformer = CosmosTransformer3DModel.from_pretrained(os.path.join(PIPELINE, "transformer")).double().eval()
    vae = AutoencoderKLCosmos.from_pretrained(os.path.join(PIPELINE, "vae")).double().eval()

    cond = encode(text_encoder, tokenizer, SETTINGS["prompt"])
    uncond = np.zeros_like(cond)  # cosmos-predict1: an empty negative prompt is a zero embedding
    h, w, f = SETTINGS["height"], SETTINGS["width"], SETTINGS["num_frames"]
    shape = (1, 4, 1 + (f - 1) // 8, h // 8, w // 8)
    noise = torch.randn(shape, generator=torch.Generator().manual_seed(11))
    padding = torch.zeros(1, 1, h, w, dtype=torch.float64)

    def network(x_in, c_noise, text):
        with torch.no_grad():
            out = transformer(hidden_states=torch.from_numpy(x_in), timestep=torch.tensor([c_noise], dtype=torch.float64),
                              encoder_hidden_states=torch.from_numpy(text), fps=SETTINGS["fps"],
                              padding_mask=padding, return_dict=False)[0]
        return out.numpy()

    sigmas = predict1_sigmas(SETTINGS["num_inference_steps"])
    g = SETTINGS["guidance_scale"]
    x = noise.double().numpy() * math.sqrt(80.0 ** 2 + 1.0)
    record = {}
    for i in range(len(sigmas) - 1):
        s, s_next = sigmas[i], sigmas[i + 1]
        c_in = 1.0 / math.sqrt(s * s + SIGMA_DATA ** 2)
        c_skip = SIGMA_DATA ** 2 / (s * s + SIGMA_DATA ** 2)
        c_out = s * SIGMA_DATA / math.sqrt(s * s + SIGMA_DATA ** 2)
        c_noise = 0.25 * math.log(s)
        f_cond = network(x * c_in, c_noise, cond)
        f_uncond = network(x * c_in, c_noise, uncond)
        f_guided = f_cond + g * (f_cond - f_uncond)
        x0 = c_skip * x + c_out * f_guided
        x = x0 if s_next == 0 else x + (x - x0) / s * (s_next - s)
        record[f"step{i}.latents"] = torch.from_numpy(x.copy())

    mean = np.array(vae.config.latents_mean).reshape(1, 4, -1, 1, 1)[:, :, : shape[2]]
    std = np.array(vae.config.latents_std).reshape(1, 4, -1, 1, 1)[:, :, : shape[2]]
    z = x * std / SIGMA_DATA + mean
    with torch.no_grad():
        record["decoded_raw"] = vae.decode(torch.from_numpy(z), return_dict=False)[0]
    record.update(noise=noise, prompt_embeds=torch.from_numpy(cond), negative_prompt_embeds=torch.from_numpy(uncond),
                  sigmas=torch.from_numpy(sigmas))
    os.makedirs(OUT, exist_ok=True)
    save_file({k: v.float().contiguous() for k, v in record.items()}, os.path.join(OUT, "run.safetensors"))
    with open(os.path.join(OUT, "run.json"), "w") as fh:
        json.dump(SETTINGS, fh, indent=2)
    print(f"{OUT}: sigmas {sigmas.tolist()}; decoded_raw max {record['decoded_raw'].abs().max():.3f}; "
          f"final latents max {np.abs(x).max():.3f}")


if __name__ == "__main__":
    main()
