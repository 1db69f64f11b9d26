"""Writes the Cosmos video tokenizer (CV8x8x8, diffusers `AutoencoderKLCosmos`) parity fixtures:
a tiny random model (the real architecture: Haar patcher with patch 4, factorised causal
convolutions, per-frame GroupNorm, mid-block spatial and causal temporal attention, 8x8x8
compression) and its encode / decode outputs.

crates/orrery-runtime/tests/fixtures/cosmos_vae/tiny/: config.json + bf16 weights, and
`encode_<name>.safetensors` (`sample` -> reference `latent`, the distribution's mode) and
`decode_<name>.safetensors` (`z` -> reference `sample`) for: 9 frames at 16 x 24 (batch 2,
non-square), 17 frames at 8 x 8, a single frame at 16 x 16. cosmos_vae/tiny_attn/: the same
model with attention also at resolution 256, 17 frames at 8 x 8.

Run from the repository root:
  HF_HUB_OFFLINE=1 .venv-ref/bin/python tools/reference/make_cosmos_vae_fixtures.py
"""
import math
import os
import shutil

import torch
from diffusers import AutoencoderKLCosmos
from safetensors.torch import save_file

OUT = os.path.join("crates", "orrery-runtime", "tests", "fixtures", "cosmos_vae")
torch.set_num_threads(2)
torch.use_deterministic_algorithms(True)


def randomize(model, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1:
                base = 1.0 if "norm" in name else 0.0
                p.copy_(base + 0.1 * torch.randn(p.shape, generator=g))
            else:
                fan_in = p[0].numel()
                p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(fan_in))


def write_model(name, cases, **kwargs):
    """A random bf16 model in OUT/<name> and its encode / decode fixtures for each case
    (batch, frames, height, width)."""
    d = os.path.join(OUT, name)
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    model = AutoencoderKLCosmos(latent_channels=4, encoder_block_out_channels=(8, 16, 16, 16),
                                decode_block_out_channels=(8, 16, 16, 16), latents_mean=None, latents_std=None,
                                **kwargs)
    randomize(model, 1)
    # Stored in bf16 (half the bytes to commit; the f32 reference loads them widened, which
    # is also how orrery reads bf16 weights).
    model.to(torch.bfloat16).save_pretrained(d)
    model = AutoencoderKLCosmos.from_pretrained(d, torch_dtype=torch.float32).eval()
    g = torch.Generator().manual_seed(7)
    for case, (b, f, h, w) in cases.items():
        x = torch.rand(b, 3, f, h, w, generator=g) * 2 - 1
        with torch.no_grad():
            latent = model.encode(x).latent_dist.mode()
        save_file({"sample": x.contiguous(), "latent": latent.contiguous()}, os.path.join(d, f"encode_{case}.safetensors"))
        z = torch.randn(latent.shape, generator=g)
        with torch.no_grad():
            sample = model.decode(z).sample
        save_file({"z": z.contiguous(), "sample": sample.contiguous()}, os.path.join(d, f"decode_{case}.safetensors"))
        print(f"{name} {case}: latent {tuple(latent.shape)} max {latent.abs().max():.3f}; "
              f"sample {tuple(sample.shape)} max {sample.abs().max():.3f}")
    for f in sorted(os.listdir(d)):
        print(f, os.path.getsize(os.path.join(d, f)))


def main():
    write_model("tiny", {"f9_16x24": (2, 9, 16, 24), "f17_8x8": (1, 17, 8, 8), "f1_16x16": (1, 1, 16, 16)})
    # Attention at resolution 256 as well: the encoder's first down block (before the
    # temporal down-sampler, 2 frames per latent frame) and the decoder's last up block
    # (after the temporal up-sampler) then hold causal temporal attention, which the
    # chunked runs must feed with the right number of earlier frames.
    write_model("tiny_attn", {"f17_8x8": (1, 17, 8, 8)}, attention_resolutions=(256, 32))


if __name__ == "__main__":
    main()
