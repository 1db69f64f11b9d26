"""Writes the tiny Cosmos Text2World pipeline fixture for crates/orrery-pipeline/tests: a
diffusers pipeline folder of random components with the real architectures (T5 encoder with
the tiny T5 tokenizer of crates/orrery-text/tests/fixtures/t5_tiny, CosmosTransformer3DModel,
AutoencoderKLCosmos with per-channel x per-frame latent statistics, EDMEulerScheduler with the
Cosmos config) and one run of diffusers' CosmosTextToWorldPipeline on it with injected noise.

crates/orrery-pipeline/tests/fixtures/cosmos_t2w_tiny/: model_index.json and the component
folders (f32 weights), and `run.safetensors` with the injected `noise`, `prompt_embeds`,
`negative_prompt_embeds`, `sigmas`, `step{i}.latents` (the latents after step i) and
`decoded_raw` (the decoder's output before any clamping) and `frames_uint8` (the pipeline's
8-bit frames [F, H, W, 3], stored as floats); `run.json` holds the settings.

Run from the repository root:
  HF_HUB_OFFLINE=1 .venv-ref/bin/python tools/reference/make_cosmos_pipeline_fixtures.py
"""
import json
import math
import os
import shutil

import torch
from diffusers import AutoencoderKLCosmos, CosmosTextToWorldPipeline, CosmosTransformer3DModel, EDMEulerScheduler
from safetensors.torch import save_file
from transformers import T5Config, T5EncoderModel, T5TokenizerFast

OUT = os.path.join("crates", "orrery-pipeline", "tests", "fixtures", "cosmos_t2w_tiny")
TOKENIZER = os.path.join("crates", "orrery-text", "tests", "fixtures", "t5_tiny")
torch.set_num_threads(2)
torch.use_deterministic_algorithms(True)

SETTINGS = dict(prompt="A robot arm stacks red cubes on a wooden table.", negative_prompt="blurry, distorted",
                height=32, width=48, num_frames=9, num_inference_steps=3, guidance_scale=7.0, fps=30)
COSMOS_SCHEDULER = dict(sigma_min=0.002, sigma_max=80, sigma_data=0.5, sigma_schedule="karras",
                        num_train_timesteps=1000, prediction_type="epsilon", rho=7.0, final_sigmas_type="sigma_min")


class DummySafetyChecker:
    """Passes everything (diffusers' test suite uses the same stand-in)."""

    def to(self, *args, **kwargs):
        return self

    def check_text_safety(self, prompt):
        return True

    def check_video_safety(self, video):
        return video


def randomize(model, seed, vector_base=0.0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1:
                base = 1.0 if ("norm" in name or "layer_norm" in name) else vector_base
                p.copy_(base + 0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(p[0].numel()))


def tiny_components(out, pipeline_class, transformer_in_channels, transformer_seed):
    """The tiny random components (the real architectures at toy widths), saved under `out` as a
    diffusers pipeline folder of `pipeline_class`; returns them."""
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(out)
    tokenizer = T5TokenizerFast.from_pretrained(TOKENIZER)
    text_encoder = T5EncoderModel(T5Config(vocab_size=len(tokenizer), d_model=16, d_kv=8, d_ff=32, num_layers=2,
                                           num_heads=2, feed_forward_proj="relu")).eval()
    randomize(text_encoder, 1)
    transformer = CosmosTransformer3DModel(in_channels=transformer_in_channels, out_channels=4, num_attention_heads=2,
                                           attention_head_dim=12, num_layers=2, mlp_ratio=2.0, text_embed_dim=16,
                                           adaln_lora_dim=8, max_size=(8, 16, 16), patch_size=(1, 2, 2),
                                           rope_scale=(2.0, 1.0, 1.0), concat_padding_mask=True,
                                           extra_pos_embed_type="learnable").eval()
    randomize(transformer, transformer_seed)
    g = torch.Generator().manual_seed(4)
    mean = (0.1 * torch.randn(4 * 16, generator=g)).tolist()
    std = (0.5 + torch.rand(4 * 16, generator=g)).tolist()
    vae = AutoencoderKLCosmos(latent_channels=4, encoder_block_out_channels=(8, 16, 16, 16),
                              decode_block_out_channels=(8, 16, 16, 16), latents_mean=mean, latents_std=std).eval()
    randomize(vae, 3)
    scheduler = EDMEulerScheduler(**COSMOS_SCHEDULER)

    text_encoder.save_pretrained(os.path.join(out, "text_encoder"))
    tokenizer.save_pretrained(os.path.join(out, "tokenizer"))
    for f in os.listdir(os.path.join(out, "tokenizer")):
        if f not in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
            os.remove(os.path.join(out, "tokenizer", f))
    transformer.save_pretrained(os.path.join(out, "transformer"))
    vae.save_pretrained(os.path.join(out, "vae"))
    scheduler.save_pretrained(os.path.join(out, "scheduler"))
    with open(os.path.join(out, "model_index.json"), "w") as f:
        json.dump({"_class_name": pipeline_class, "_diffusers_version": "0.42.1",
                   "safety_checker": ["__main__", "DummyCosmosSafetyChecker"],
                   "scheduler": ["diffusers", "EDMEulerScheduler"], "text_encoder": ["transformers", "T5EncoderModel"],
                   "tokenizer": ["transformers", "T5TokenizerFast"],
                   "transformer": ["diffusers", "CosmosTransformer3DModel"], "vae": ["diffusers", "AutoencoderKLCosmos"]},
                  f, indent=2)
    return dict(text_encoder=text_encoder, tokenizer=tokenizer, transformer=transformer, vae=vae, scheduler=scheduler)


def main():
    parts = tiny_components(OUT, "CosmosTextToWorldPipeline", 4, 2)
    text_encoder, tokenizer, transformer, vae, scheduler = (parts[k] for k in
                                                            ("text_encoder", "tokenizer", "transformer", "vae", "scheduler"))
    pipe = CosmosTextToWorldPipeline(text_encoder=text_encoder, tokenizer=tokenizer, transformer=transformer, vae=vae,
                                     scheduler=scheduler, safety_checker=DummySafetyChecker())
    latent_shape = (1, 4, 1 + (SETTINGS["num_frames"] - 1) // 8, SETTINGS["height"] // 8, SETTINGS["width"] // 8)
    noise = torch.randn(latent_shape, generator=torch.Generator().manual_seed(5))
    record = {"noise": noise}

    def on_step(pipeline, i, t, kwargs):
        record[f"step{i}.latents"] = kwargs["latents"].detach().clone()
        return {}

    decode = vae.decode

    def recording_decode(z, *args, **kwargs):
        out = decode(z, *args, **kwargs)
        record["decoded_raw"] = (out[0] if isinstance(out, tuple) else out.sample).detach().clone()
        return out

    vae.decode = recording_decode
    with torch.no_grad():
        embeds, negative = pipe.encode_prompt(SETTINGS["prompt"], SETTINGS["negative_prompt"], max_sequence_length=512)
        result = pipe(**SETTINGS, latents=noise.clone(), output_type="np", callback_on_step_end=on_step,
                      callback_on_step_end_tensor_inputs=["latents"])
    # The pipeline's 8-bit frames [F, H, W, 3] (it returns them divided by 255).
    record["frames_uint8"] = torch.from_numpy((result.frames[0] * 255).round())
    vae.decode = decode
    record["prompt_embeds"], record["negative_prompt_embeds"] = embeds, negative
    record["sigmas"] = pipe.scheduler.sigmas.clone()
    save_file({k: v.float().contiguous() for k, v in record.items()}, os.path.join(OUT, "run.safetensors"))
    with open(os.path.join(OUT, "run.json"), "w") as f:
        json.dump(SETTINGS, f, indent=2)
    total = 0
    for root, _, files in os.walk(OUT):
        for name in sorted(files):
            total += os.path.getsize(os.path.join(root, name))
    print(f"{OUT}: {total} bytes; steps {[k for k in record if k.startswith('step')]}; "
          f"decoded_raw {tuple(record['decoded_raw'].shape)} max {record['decoded_raw'].abs().max():.3f}")


if __name__ == "__main__":
    main()
