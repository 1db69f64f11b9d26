"""Writes a random t5-11b encoder checkpoint (bf16, one safetensors shard per block plus an
index) for measuring the real encoder's time and memory without downloading it.

    .venv-ref/bin/python tools/bench/make_t5_11b_random.py <out-dir>

The folder gets configs/t5-11b/config.json and about 9.7 GB of weights; nothing here is
committed. Values are N(0,1)/sqrt(fan_in) (norms 1 + 0.1 N(0,1)), so activations stay finite.
"""
import json
import os
import shutil
import sys

import torch
from safetensors.torch import save_file

out = sys.argv[1]
os.makedirs(out, exist_ok=True)
shutil.copy(os.path.join("configs", "t5-11b", "config.json"), os.path.join(out, "config.json"))
with open(os.path.join(out, "config.json")) as f:
    c = json.load(f)
d, inner, ff, layers = c["d_model"], c["num_heads"] * c["d_kv"], c["d_ff"], c["num_layers"]
g = torch.Generator().manual_seed(0)


def mat(rows, cols):
    return (torch.randn(rows, cols, generator=g) / cols**0.5).to(torch.bfloat16)


def norm():
    return (1 + 0.1 * torch.randn(d, generator=g)).to(torch.bfloat16)


weight_map = {}
shards = layers + 1


def write(i, tensors):
    name = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
    save_file(tensors, os.path.join(out, name))
    for k in tensors:
        weight_map[k] = name
    print(f"wrote {name}", flush=True)


write(0, {
    "shared.weight": torch.randn(c["vocab_size"], d, generator=g).to(torch.bfloat16),
    "encoder.final_layer_norm.weight": norm(),
    "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight":
        torch.randn(c["relative_attention_num_buckets"], c["num_heads"], generator=g).to(torch.bfloat16),
})
for i in range(layers):
    p = f"encoder.block.{i}"
    a = f"{p}.layer.0.SelfAttention"
    write(i + 1, {
        f"{a}.q.weight": mat(inner, d), f"{a}.k.weight": mat(inner, d), f"{a}.v.weight": mat(inner, d),
        f"{a}.o.weight": mat(d, inner), f"{p}.layer.0.layer_norm.weight": norm(),
        f"{p}.layer.1.DenseReluDense.wi.weight": mat(ff, d), f"{p}.layer.1.DenseReluDense.wo.weight": mat(d, ff),
        f"{p}.layer.1.layer_norm.weight": norm(),
    })
with open(os.path.join(out, "model.safetensors.index.json"), "w") as f:
    json.dump({"metadata": {}, "weight_map": weight_map}, f, indent=1)
