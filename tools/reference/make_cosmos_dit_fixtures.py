"""Writes the Cosmos diffusion-transformer parity fixtures: tiny random diffusers
`CosmosTransformer3DModel`s and their outputs.

Folders under crates/orrery-runtime/tests/fixtures/cosmos_dit/ (config.json + weights, and
`case_*.safetensors` files holding the inputs and the reference `sample`):
- `t2w`: Cosmos-1.0 text-to-world (learnable position embedding, padding-mask channel);
- `v2w`: Cosmos-1.0 video-to-world (`condition_mask` channel, in_channels + 1);
- `predict2`: the Predict2.5 network (no extra position embedding, per-frame 5-D timestep,
  cross-attention projection);
- `t2w_bf16`: the `t2w` weights stored in bf16; the reference is diffusers loading that bf16
  file with torch_dtype=float32;
- `t2w_predict1`: the `t2w` weights as an original Predict1 `model.pt` (`net.*` names, plus
  TransformerEngine `_extra_state` entries and the training-only `logvar.*` tensors) with the
  same config.json; orrery must give the same bits as the diffusers layout at eps 1e-6.
Every case has batch 2 and non-square latents (3 x 6 x 10 -> 3 x 3 x 5 patches). Absent
optional inputs are absent from the file. Every parameter is overwritten with seeded random
values (norm weights 1 + 0.1 N(0,1), other 1-D 0.1 N(0,1), matrices N(0,1)/sqrt(fan_in),
position tables N(0,1)) so no code path hides behind a zero.

Run from the repository root:
  HF_HUB_OFFLINE=1 .venv-ref/bin/python tools/reference/make_cosmos_dit_fixtures.py
"""
import math
import os
import shutil

import torch
from diffusers import CosmosTransformer3DModel
from safetensors.torch import save_file

OUT = os.path.join("crates", "orrery-runtime", "tests", "fixtures", "cosmos_dit")
torch.set_num_threads(2)
torch.use_deterministic_algorithms(True)

BASE = dict(in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=12, num_layers=2,
            mlp_ratio=4.0, text_embed_dim=16, adaln_lora_dim=8, max_size=(16, 32, 32), patch_size=(1, 2, 2),
            rope_scale=(2.0, 1.0, 1.0), concat_padding_mask=True, extra_pos_embed_type="learnable")
B, C, T, H, W, S = 2, 4, 3, 6, 10, 7


def randomize(model, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1:
                base = 1.0 if "norm" in name else 0.0
                p.copy_(base + 0.1 * torch.randn(p.shape, generator=g))
            elif "pos_emb" in name:
                p.copy_(torch.randn(p.shape, generator=g))
            else:
                p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(p.shape[1]))


def fresh(name):
    d = os.path.join(OUT, name)
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    return d


def run_case(folder, name, seed, *, fps=None, attention_mask=False, padding=True, condition=False,
             timestep_5d=False, text_dim=16, dtype=None):
    g = torch.Generator().manual_seed(seed)
    model = CosmosTransformer3DModel.from_pretrained(folder, torch_dtype=torch.float32).eval()
    io = {
        "hidden_states": torch.randn(B, C, T, H, W, generator=g),
        "encoder_hidden_states": torch.randn(B, S, text_dim, generator=g),
    }
    io["timestep"] = (torch.rand(B, 1, T, 1, 1, generator=g) if timestep_5d else torch.rand(B, generator=g)) * 2 - 1
    kwargs = {}
    if attention_mask:
        mask = torch.ones(B, S, dtype=torch.bool)
        mask[1, 4:] = False
        io["attention_mask"] = mask.to(torch.uint8)
        kwargs["attention_mask"] = mask
    if fps is not None:
        io["fps"] = torch.tensor(float(fps))
        kwargs["fps"] = fps
    if condition:
        cm = torch.zeros(B, 1, T, H, W)
        cm[:, :, :1] = 1.0
        io["condition_mask"] = cm
        kwargs["condition_mask"] = cm
    if padding:
        pm = (torch.rand(1, 1, 8 * H, 8 * W, generator=g) > 0.5).float()
        io["padding_mask"] = pm
        kwargs["padding_mask"] = pm
    else:
        kwargs["padding_mask"] = torch.zeros(1, 1, 8 * H, 8 * W)
    with torch.no_grad():
        out = model(hidden_states=io["hidden_states"], timestep=io["timestep"],
                    encoder_hidden_states=io["encoder_hidden_states"], **kwargs).sample
    io["sample"] = out
    path = os.path.join(folder, f"case_{name}.safetensors")
    save_file({k: v.contiguous() for k, v in io.items()}, path)
    print(f"wrote {path}: max|sample| = {out.abs().max():.3f}")


def predict1_key(name):
    """diffusers key -> original model.pt key (cosmos-reference.md section 3.5)."""
    fixed = {
        "patch_embed.proj.weight": "x_embedder.proj.1.weight",
        "time_embed.t_embedder.linear_1.weight": "t_embedder.1.linear_1.weight",
        "time_embed.t_embedder.linear_2.weight": "t_embedder.1.linear_2.weight",
        "time_embed.norm.weight": "affline_norm.weight",
        "norm_out.linear_1.weight": "final_layer.adaLN_modulation.1.weight",
        "norm_out.linear_2.weight": "final_layer.adaLN_modulation.2.weight",
        "proj_out.weight": "final_layer.linear.weight",
    }
    if name in fixed:
        return "net." + fixed[name]
    if name.startswith("learnable_pos_embed."):
        return "net.extra_pos_embedder." + name[len("learnable_pos_embed."):]
    _, i, rest = name.split(".", 2)
    sub = {
        "ff.net.0.proj.weight": "blocks.2.block.layer1.weight",
        "ff.net.2.weight": "blocks.2.block.layer2.weight",
    }
    for k in (1, 2, 3):
        sub[f"norm{k}.linear_1.weight"] = f"blocks.{k - 1}.adaLN_modulation.1.weight"
        sub[f"norm{k}.linear_2.weight"] = f"blocks.{k - 1}.adaLN_modulation.2.weight"
    for a, slot in (("attn1", 0), ("attn2", 1)):
        for p, o in (("to_q.weight", "to_q.0.weight"), ("norm_q.weight", "to_q.1.weight"),
                     ("to_k.weight", "to_k.0.weight"), ("norm_k.weight", "to_k.1.weight"),
                     ("to_v.weight", "to_v.0.weight"), ("to_out.0.weight", "to_out.0.weight")):
            sub[f"{a}.{p}"] = f"blocks.{slot}.block.attn.{o}"
    return f"net.blocks.block{i}.{sub[rest]}"


def write_predict1(src, dst):
    from safetensors.torch import load_file
    import io
    state = {predict1_key(k): v for k, v in load_file(os.path.join(src, "diffusion_pytorch_model.safetensors")).items()}
    # What the original checkpoints carry besides the network: TE extra state and logvar.
    state["net.blocks.block0.blocks.0.block.attn._extra_state"] = io.BytesIO(b"te-extra-state")
    state["net.blocks.block1.blocks.1.block.attn._extra_state"] = None
    state["logvar.0.freqs"] = torch.randn(16)
    state["logvar.0.phases"] = torch.randn(16)
    state["logvar.1.weight"] = torch.randn(1, 16)
    torch.save(state, os.path.join(dst, "model.pt"))
    shutil.copy(os.path.join(src, "config.json"), os.path.join(dst, "config.json"))
    print(f"wrote {dst}/model.pt")


def main():
    d = fresh("t2w")
    model = CosmosTransformer3DModel(**BASE)
    randomize(model, 1)
    model.save_pretrained(d)
    run_case(d, "fps30_masked", 10, fps=30, attention_mask=True)
    run_case(d, "fps24", 11, fps=24)
    run_case(d, "no_fps_no_padding", 12, padding=False)

    d16 = fresh("t2w_bf16")
    model.to(torch.bfloat16).save_pretrained(d16)
    run_case(d16, "fps24", 13, fps=24, attention_mask=True)

    write_predict1(os.path.join(OUT, "t2w"), fresh("t2w_predict1"))

    d = fresh("v2w")
    model = CosmosTransformer3DModel(**dict(BASE, in_channels=C + 1))
    randomize(model, 2)
    model.save_pretrained(d)
    run_case(d, "cond_fps24", 20, fps=24, condition=True)

    d = fresh("predict2")
    model = CosmosTransformer3DModel(**dict(BASE, extra_pos_embed_type=None, use_crossattn_projection=True,
                                            crossattn_proj_in_channels=20, encoder_hidden_states_channels=16,
                                            rope_scale=(1.0, 3.0, 3.0)))
    randomize(model, 3)
    model.save_pretrained(d)
    run_case(d, "per_frame_timestep", 30, fps=16, timestep_5d=True, text_dim=20, attention_mask=True)
    for root, _, files in os.walk(OUT):
        for f in sorted(files):
            p = os.path.join(root, f)
            print(f"{p}: {os.path.getsize(p)} bytes")


if __name__ == "__main__":
    main()
