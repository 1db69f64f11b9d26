"""Writes the OrreryTestMlp fixtures used by the CLI integration tests.

A torch MLP (Linear -> GELU(erf) -> Linear) with seeded random weights is saved as a
diffusers-style component folder (config.json + model.safetensors), once in f32 and once in
bf16, together with input files covering the `orrery run` contract and the torch outputs.

Run from the repository root:  .venv-ref/bin/python tools/reference/make_test_mlp.py
"""
import json
import os

import torch
from safetensors.torch import save_file

OUT = os.path.join("crates", "orrery-cli", "tests", "fixtures")
IN_F, HID_F, OUT_F = 8, 16, 4

torch.manual_seed(0)
torch.set_num_threads(1)


class Mlp(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = torch.nn.Linear(IN_F, HID_F)
        self.fc2 = torch.nn.Linear(HID_F, OUT_F)

    def forward(self, x):
        return self.fc2(torch.nn.functional.gelu(self.fc1(x)))


def write_component(name, model, dtype):
    d = os.path.join(OUT, name)
    os.makedirs(d, exist_ok=True)
    config = {
        "_class_name": "OrreryTestMlp",
        "in_features": IN_F,
        "hidden_features": HID_F,
        "out_features": OUT_F,
        "torch_dtype": {torch.float32: "float32", torch.bfloat16: "bfloat16"}[dtype],
    }
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
    state = {k: v.detach().to(dtype).contiguous() for k, v in model.state_dict().items()}
    save_file(state, os.path.join(d, "model.safetensors"))
    return state


model = Mlp()
with torch.no_grad():
    for p in model.parameters():
        p.copy_(torch.randn_like(p) / p.shape[-1] ** 0.5)

x = torch.randn(3, IN_F)
write_component("test_mlp_f32", model, torch.float32)
bf16_state = write_component("test_mlp_bf16", model, torch.bfloat16)

with torch.inference_mode():
    y_f32 = model(x)
    # The bf16 component computes in f32 on bf16-rounded weights.
    widened = Mlp()
    widened.load_state_dict({k: v.float() for k, v in bf16_state.items()})
    y_bf16 = widened(x)
    x4 = torch.randn(2, 5, IN_F)
    y4 = model(x4)

inputs = os.path.join(OUT, "inputs")
os.makedirs(inputs, exist_ok=True)
save_file({"x": x}, os.path.join(inputs, "x_f32.safetensors"))
save_file({"x": x.half()}, os.path.join(inputs, "x_f16.safetensors"))
save_file({"x": x.bfloat16()}, os.path.join(inputs, "x_bf16.safetensors"))
save_file({"x": x4}, os.path.join(inputs, "x_batched.safetensors"))
save_file({"x": torch.arange(3 * IN_F, dtype=torch.int64).reshape(3, IN_F)}, os.path.join(inputs, "x_i64.safetensors"))
save_file({"x": torch.randn(3, IN_F + 1)}, os.path.join(inputs, "x_wrong_shape.safetensors"))
save_file({"input": x}, os.path.join(inputs, "x_misnamed.safetensors"))
save_file({"unused": x}, os.path.join(inputs, "empty_of_x.safetensors"))

with torch.inference_mode():
    y_f16_in = model(x.half().float())
    y_bf16_in = model(x.bfloat16().float())
save_file(
    {
        "y_f32": y_f32,
        "y_bf16_weights": y_bf16,
        "y_batched": y4,
        "y_f16_input": y_f16_in,
        "y_bf16_input": y_bf16_in,
    },
    os.path.join(OUT, "expected.safetensors"),
)
print("wrote", OUT)
