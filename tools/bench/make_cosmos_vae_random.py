"""Writes a random CV8x8x8 video tokenizer (diffusers `AutoencoderKLCosmos` at the real
widths, f32 weights, configs/cosmos-1.0-tokenizer-cv8x8x8/config.json) and a random latent
for measuring the real-size decode's time and memory without downloading the model.

    .venv-ref/bin/python tools/bench/make_cosmos_vae_random.py <out-dir> [latent-frames h w]

The folder gets config.json + diffusion_pytorch_model.safetensors (about 420 MB) and
`<out-dir>-z.safetensors` with `z` [1, 16, T, h, w] (default 16 x 88 x 160, the latent of
121 x 704 x 1280). Nothing here is committed. Weights are N(0,1)/sqrt(fan_in) (vectors
0 + 0.1 N(0,1), norms 1 + 0.1 N(0,1)), so activations stay finite.
"""
import json
import math
import os
import sys

import torch
from diffusers import AutoencoderKLCosmos
from safetensors.torch import save_file

out = sys.argv[1]
t, h, w = (int(v) for v in sys.argv[2:5]) if len(sys.argv) >= 5 else (16, 88, 160)
with open(os.path.join("configs", "cosmos-1.0-tokenizer-cv8x8x8", "config.json")) as f:
    config = {k: v for k, v in json.load(f).items() if not k.startswith("_")}
model = AutoencoderKLCosmos(**config)
g = torch.Generator().manual_seed(0)
with torch.no_grad():
    for name, p in model.named_parameters():
        if p.dim() == 1:
            p.copy_((1.0 if "norm" in name else 0.0) + 0.1 * torch.randn(p.shape, generator=g))
        else:
            p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(p[0].numel()))
model.save_pretrained(out)
save_file({"z": torch.randn(1, 16, t, h, w, generator=g)}, f"{out}-z.safetensors")
print(f"wrote {out} and {out}-z.safetensors (z [1, 16, {t}, {h}, {w}])")
