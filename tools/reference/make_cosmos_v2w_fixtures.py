"""Writes the tiny Cosmos Video2World pipeline fixture for crates/orrery-pipeline/tests: the
components of make_cosmos_pipeline_fixtures.py (same seeds) with a transformer that takes the
condition-mask channel, and runs of diffusers' CosmosVideoToWorldPipeline with 1 and with 9
input frames already at the output size (17 output frames, so 1 resp. 2 conditioning latent
frames), once with augment sigma 0.001 and the augment noise recorded (randn_tensor wrapped),
once with augment sigma 0.

crates/orrery-pipeline/tests/fixtures/cosmos_v2w_tiny/: model_index.json and the component
folders, and `run_<case>.safetensors` with `video` (the preprocessed input, [1, 3, F, H, W]
in [-1, 1]), `noise`, `augment_noise.step{i}.cond` / `.uncond`, `step{i}.latents` and
`decoded_raw`; `run_<case>.json` holds the settings.

Run from the repository root:
  PYTHONPATH=tools/reference HF_HUB_OFFLINE=1 .venv-ref/bin/python tools/reference/make_cosmos_v2w_fixtures.py
"""
import json
import os

import torch
import diffusers.pipelines.cosmos.pipeline_cosmos_video2world as v2w
from diffusers import CosmosVideoToWorldPipeline
from safetensors.torch import save_file

from make_cosmos_pipeline_fixtures import DummySafetyChecker, tiny_components

OUT = os.path.join("crates", "orrery-pipeline", "tests", "fixtures", "cosmos_v2w_tiny")
torch.set_num_threads(2)
torch.use_deterministic_algorithms(True)
BASE = dict(prompt="The robot arm keeps stacking the cubes.", negative_prompt="blurry, distorted",
            height=32, width=48, num_frames=17, num_inference_steps=3, guidance_scale=7.0, fps=30)


def main():
    parts = tiny_components(OUT, "CosmosVideoToWorldPipeline", 5, 6)
    vae = parts["vae"]
    pipe = CosmosVideoToWorldPipeline(**parts, safety_checker=DummySafetyChecker())
    original_randn = v2w.randn_tensor
    original_decode = vae.decode
    for cond_frames in (1, 9):
        for augment_sigma in (0.001, 0.0):
            case = f"f{cond_frames}_sigma{augment_sigma:g}"
            gen = torch.Generator().manual_seed(10 + cond_frames)
            frames_u8 = torch.randint(0, 256, (cond_frames, 32, 48, 3), generator=gen, dtype=torch.uint8)
            video = frames_u8.permute(3, 0, 1, 2).unsqueeze(0).float() / 255 * 2 - 1  # [1, 3, F, H, W]
            noise = torch.randn(1, 4, 3, 4, 6, generator=gen)
            record = {"video": video, "noise": noise}
            draws = []

            def recording_randn(shape, generator=None, device=None, dtype=None, layout=None):
                t = original_randn(shape, generator=gen, device=device, dtype=dtype, layout=layout)
                draws.append(t.clone())
                return t

            def on_step(pipeline, i, t, kwargs):
                record[f"step{i}.latents"] = kwargs["latents"].detach().clone()
                return {}

            def recording_decode(z, *args, **kwargs):
                out = original_decode(z, *args, **kwargs)
                record["decoded_raw"] = (out[0] if isinstance(out, tuple) else out.sample).detach().clone()
                return out

            v2w.randn_tensor = recording_randn
            vae.decode = recording_decode
            with torch.no_grad():
                # preprocess_video takes [B, F, C, H, W]; values in [-1, 1] pass unchanged.
                pipe(**BASE, video=video.permute(0, 2, 1, 3, 4), latents=noise.clone(), augment_sigma=augment_sigma, output_type="np",
                     callback_on_step_end=on_step, callback_on_step_end_tensor_inputs=["latents"])
            v2w.randn_tensor = original_randn
            vae.decode = original_decode
            # Two draws per step: the conditional branch's augment noise, then the unconditional.
            for i in range(BASE["num_inference_steps"]):
                record[f"augment_noise.step{i}.cond"] = draws[2 * i]
                record[f"augment_noise.step{i}.uncond"] = draws[2 * i + 1]
            save_file({k: v.float().contiguous() for k, v in record.items()}, os.path.join(OUT, f"run_{case}.safetensors"))
            with open(os.path.join(OUT, f"run_{case}.json"), "w") as f:
                json.dump(dict(BASE, augment_sigma=augment_sigma, cond_frames=cond_frames), f, indent=2)
            print(case, len(draws), "draws; decoded_raw", tuple(record["decoded_raw"].shape))


if __name__ == "__main__":
    main()
