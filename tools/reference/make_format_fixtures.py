#!/usr/bin/env python3
"""Writes the small checkpoint fixtures used by crates/orrery-formats/tests.

Run from the repository root with the reference venv:

    .venv-ref/bin/python tools/reference/make_format_fixtures.py

Outputs go to crates/orrery-formats/tests/fixtures/ (a few KB in total) together with
expected.json, which records — as torch itself reports them after `torch.load(...,
weights_only=True)` where possible — every tensor's dtype, shape, stride, storage offset and
values, so the Rust tests can check exact values.

Nothing in here ever unpickles the malicious fixtures with weights_only=False; the os.system
"payload" objects only ever *return* os.system from __reduce__ and are never called.
"""

import collections
import io
import json
import os
import secrets
import shutil
import struct
import sys
import types
import warnings
import zipfile

import torch
from safetensors.torch import save_file

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OUT = os.path.join(ROOT, "crates", "orrery-formats", "tests", "fixtures")

DTYPE_NAMES = {
    torch.float32: "f32",
    torch.float16: "f16",
    torch.bfloat16: "bf16",
    torch.int64: "i64",
    torch.int32: "i32",
    torch.uint8: "u8",
    torch.bool: "bool",
}

expected = {"files": {}}


def describe(t, with_strides):
    d = {
        "dtype": DTYPE_NAMES[t.dtype],
        "shape": list(t.shape),
        # Row-major values of the view, as exact floats (every fixture value is exact in f64).
        "values": [float(x) for x in t.detach().reshape(-1).to(torch.float64).tolist()],
    }
    if with_strides:
        d["stride"] = list(t.stride())
        d["storage_offset"] = t.storage_offset()
        d["contiguous"] = t.is_contiguous()
    return d


def record(name, tensors, with_strides, **extra):
    entry = {"tensors": {k: describe(v, with_strides) for k, v in tensors.items()}}
    entry.update(extra)
    expected["files"][name] = entry


def flatten(obj, prefix=""):
    """Mirrors the Rust flattening: dicts and lists/tuples become dotted keys."""
    out = {}
    if isinstance(obj, torch.Tensor):
        out[prefix] = obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            out.update(flatten(v, f"{prefix}.{i}" if prefix else str(i)))
    return out


def path(*parts):
    return os.path.join(OUT, *parts)


def all_dtypes():
    return collections.OrderedDict(
        [
            ("f32", torch.arange(6, dtype=torch.float32).reshape(2, 3) * 0.5 - 1.0),
            ("f16", torch.tensor([1.5, -2.25, 65504.0, 0.000061035156], dtype=torch.float16)),
            ("bf16", torch.tensor([[1.0, -3.5], [256.0, 0.0078125]], dtype=torch.bfloat16)),
            ("i64", torch.tensor([-(2**40), 0, 7], dtype=torch.int64)),
            ("i32", torch.tensor([-5, 123456], dtype=torch.int32)),
            ("u8", torch.tensor([0, 7, 255], dtype=torch.uint8)),
            ("bool", torch.tensor([True, False, True])),
            ("scalar", torch.tensor(3.25)),
            ("empty", torch.zeros(0, 3)),
        ]
    )


def safetensors_fixtures():
    t = all_dtypes()
    save_file({k: v.contiguous() for k, v in t.items()}, path("single.safetensors"),
              metadata={"format": "pt", "note": "orrery fixture"})
    record("single.safetensors", t, False, metadata={"format": "pt", "note": "orrery fixture"})

    save_file({"ok": torch.ones(2), "double": torch.tensor([1.0, 2.0], dtype=torch.float64)},
              path("unsupported_dtype.safetensors"))
    record("unsupported_dtype.safetensors", {"ok": torch.ones(2)}, False, unsupported={"double": "F64"})

    # Two shards plus an index, laid out like a Hugging Face download.
    d = path("sharded")
    os.makedirs(d, exist_ok=True)
    s1 = {"blocks.0.weight": torch.arange(8, dtype=torch.float32).reshape(2, 4),
          "blocks.0.bias": torch.tensor([0.5, -0.5], dtype=torch.bfloat16)}
    s2 = {"blocks.1.weight": torch.arange(4, dtype=torch.float16).reshape(2, 2),
          "head.ids": torch.tensor([3, 1, 2], dtype=torch.int64)}
    names = ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    save_file(s1, os.path.join(d, names[0]))
    save_file(s2, os.path.join(d, names[1]))
    wm = {k: names[0] for k in s1}
    wm.update({k: names[1] for k in s2})
    total = sum(v.numel() * v.element_size() for v in list(s1.values()) + list(s2.values()))
    with open(os.path.join(d, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": wm}, f, indent=2, sort_keys=True)
    record("sharded", {**s1, **s2}, False)

    # An index naming a shard that is not there.
    d = path("sharded_missing")
    os.makedirs(d, exist_ok=True)
    save_file(s1, os.path.join(d, names[0]))
    with open(os.path.join(d, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": wm}, f, indent=2, sort_keys=True)


def torch_fixtures():
    base = torch.arange(10, dtype=torch.float32)
    sd = all_dtypes()
    sd["transposed"] = torch.arange(12.0).reshape(3, 4).t()  # strided view, saved as is
    sd["shared_base"] = base
    sd["shared_slice"] = base[2:7]  # same storage, offset 2
    sd["shared_column"] = base.view(2, 5)[:, 1]  # same storage, offset 1, stride 5
    sd["param"] = torch.nn.Parameter(torch.tensor([0.25, 4.0], dtype=torch.bfloat16), requires_grad=False)
    assert not sd["transposed"].is_contiguous()
    for proto, name in [(2, "tensors.pt"), (4, "tensors_p4.pt")]:
        torch.save(sd, path(name), pickle_protocol=proto)
        # torch's weights_only loader rejects protocol 4 (FRAME); this file is our own,
        # freshly written from plain tensors, so the full loader is safe here.
        loaded = torch.load(path(name), weights_only=(proto == 2))
        assert loaded["transposed"].stride() == (1, 4), loaded["transposed"].stride()
        assert loaded["shared_slice"].untyped_storage().data_ptr() == loaded["shared_base"].untyped_storage().data_ptr()
        record(name, dict(loaded), True)

    # Same content under transformers' naming and extension.
    torch.save({"a": torch.tensor([1.0, 2.0])}, path("pytorch_model.bin"))
    record("pytorch_model.bin", {"a": torch.tensor([1.0, 2.0])}, True)

    nested = {
        "model": {"enc": {"w": torch.eye(2), "b": torch.tensor([1, 2], dtype=torch.int32)}},
        "ema": [torch.tensor([0.5]), torch.tensor([1.5], dtype=torch.float16)],
        "epoch": 3,
        "optimizer": {
            "param_groups": [{"lr": 0.1, "params": [0, 1], "betas": (0.9, 0.99)}],
            "state": {0: {"step": torch.tensor(5.0), "exp_avg": torch.ones(2, 2)}},
        },
    }
    torch.save(nested, path("nested.pt"))
    record("nested.pt", flatten(torch.load(path("nested.pt"), weights_only=True)), True)

    ckpt = {"state_dict": collections.OrderedDict([("net.weight", torch.ones(2, 2)), ("net.bias", torch.zeros(2))]),
            "global_step": 10, "hyper_parameters": {"lr": 1e-4, "name": "x"}}
    torch.save(ckpt, path("lightning.ckpt"))
    record("lightning.ckpt", flatten(torch.load(path("lightning.ckpt"), weights_only=True)), True)

    torch.save({"a": torch.tensor([1.0, 2.0])}, path("legacy.pt"), _use_new_zipfile_serialization=False)


def unknown_global_fixture():
    # Classes that pickle as globals of a module orrery cannot know.
    mod = types.ModuleType("orrery_fixture")
    sys.modules["orrery_fixture"] = mod

    class Config:
        def __init__(self):
            self.depth = 4
            self.name = "tiny"

    class MyTensor(torch.Tensor):
        pass

    for c in (Config, MyTensor):
        c.__module__ = "orrery_fixture"
        c.__qualname__ = c.__name__
        setattr(mod, c.__name__, c)

    obj = {
        "w": torch.tensor([1.0, 2.0, 3.0]),
        "counter": collections.Counter({"steps": 3}),
        "config": Config(),
        "sub": torch.tensor([7.0, 8.0]).as_subclass(MyTensor),
        "b": torch.tensor([4], dtype=torch.int64),
    }
    torch.save(obj, path("unknown_global.pt"))
    record("unknown_global.pt", {"w": obj["w"], "b": obj["b"]}, True,
           unknown_globals={"collections.Counter": ["counter"], "orrery_fixture.Config": ["config"],
                            "orrery_fixture.MyTensor": ["sub"]},
           failing={"sub": "orrery_fixture.MyTensor"})


class _SystemCall:
    """Pickles as posix.system(cmd). __reduce__ only returns the callable; nothing runs."""

    def __init__(self, cmd):
        self.cmd = cmd

    def __reduce__(self):
        return (os.system, (self.cmd,))


def su(s):
    b = s.encode()
    return b"\x8c" + bytes([len(b)]) + b


def bu(s):
    b = s.encode()
    return b"X" + struct.pack("<I", len(b)) + b


def write_torch_zip(dest, pickle_bytes, storages, byteorder=b"little", compress=()):
    """Writes a zip in torch.save's layout: archive/data.pkl, archive/data/<key>, byteorder."""
    with zipfile.ZipFile(dest, "w") as z:
        z.writestr(zipfile.ZipInfo("archive/data.pkl"), pickle_bytes)
        z.writestr(zipfile.ZipInfo("archive/byteorder"), byteorder)
        for key, data in storages.items():
            info = zipfile.ZipInfo(f"archive/data/{key}")
            if key in compress:
                info.compress_type = zipfile.ZIP_DEFLATED
            z.writestr(info, data)
        z.writestr(zipfile.ZipInfo("archive/version"), b"3\n")


def malicious_fixtures():
    marker = f"/tmp/orrery_pwned_{secrets.token_hex(8)}"
    # 1. What an attacker gets from torch.save itself: GLOBAL 'posix system' + REDUCE.
    torch.save({"w": torch.tensor([1.0, -1.0]), "evil": _SystemCall(f"touch {marker}")}, path("malicious.pt"))
    with zipfile.ZipFile(path("malicious.pt")) as z:
        pkl = z.read([n for n in z.namelist() if n.endswith("data.pkl")][0])
    assert b"cposix\nsystem\n" in pkl
    record("malicious.pt", {"w": torch.tensor([1.0, -1.0])}, True, unknown_globals={"posix.system": ["evil"]})

    # 2. Hand-written protocol-4 pickle: GLOBAL and STACK_GLOBAL payloads, and a "tensor" whose
    #    data would come from builtins.eval.
    ok = torch.tensor([1.0, 2.0, 3.0, 4.0])
    p = b"\x80\x04}("
    p += bu("ok") + b"ctorch._utils\n_rebuild_tensor_v2\n((" + bu("storage") + b"ctorch\nFloatStorage\n"
    p += bu("0") + bu("cpu") + b"K\x04tQK\x00K\x04\x85K\x01\x85\x89ccollections\nOrderedDict\n)Rr"
    p += struct.pack("<I", 7) + b"tR"  # LONG_BINPUT 7 keeps the OrderedDict for later
    p += bu("evil") + b"cposix\nsystem\n" + bu(f"touch {marker}") + b"\x85R"
    p += bu("evil_eval") + su("builtins") + su("eval") + b"\x93"
    p += bu(f"__import__('os').system('touch {marker}')") + b"\x85R"
    p += bu("param_evil") + b"ctorch._utils\n_rebuild_parameter\n(" + su("builtins") + su("eval") + b"\x93"
    p += bu("torch.zeros(2)") + b"\x85R\x89j" + struct.pack("<I", 7) + b"tR"
    p += b"u."
    write_torch_zip(path("malicious_handmade.pt"), p, {"0": ok.numpy().tobytes()})
    record("malicious_handmade.pt", {"ok": ok}, True,
           unknown_globals={"posix.system": ["evil"], "builtins.eval": ["evil_eval", "param_evil"]},
           failing={"param_evil": "builtins.eval"})
    # torch's own safe loader must refuse it too (it never executes either).
    try:
        torch.load(path("malicious_handmade.pt"), weights_only=True)
        raise SystemExit("torch.load(weights_only=True) accepted the malicious pickle?")
    except Exception as e:  # noqa: BLE001
        assert "posix" in str(e) or "eval" in str(e) or "Unsupported" in str(e) or "global" in str(e), e
    expected["malicious_marker"] = marker


def damaged_fixtures():
    # A storage entry stored compressed, and a big-endian byteorder record.
    buf = io.BytesIO()
    torch.save({"a": torch.tensor([1.0, 2.0]), "b": torch.tensor([3, 4], dtype=torch.int64)}, buf)
    with zipfile.ZipFile(buf) as z:
        items = [(i, z.read(i)) for i in z.infolist()]
    prefix = items[0][0].filename.split("/")[0]

    def rewrite(dest, change):
        with zipfile.ZipFile(dest, "w") as out:
            for info, data in items:
                info2 = zipfile.ZipInfo(info.filename)
                data = change(info2, data)
                out.writestr(info2, data)

    def compress_a(info, data):
        if info.filename == f"{prefix}/data/0":
            info.compress_type = zipfile.ZIP_DEFLATED
        return data

    rewrite(path("compressed_storage.pt"), compress_a)
    expected["files"]["compressed_storage.pt"] = {"compressed_entry": f"{prefix}/data/0", "prefix": prefix}

    def big(info, data):
        return b"big" if info.filename.endswith("/byteorder") else data

    rewrite(path("bigendian.pt"), big)


def folder_fixtures():
    d = path("pipeline")
    if os.path.isdir(d):
        shutil.rmtree(d)
    os.makedirs(d)
    with open(os.path.join(d, "model_index.json"), "w") as f:
        json.dump({"_class_name": "CosmosTextToWorldPipeline", "_diffusers_version": "0.33.0",
                   "transformer": ["diffusers", "CosmosTransformer3DModel"],
                   "vae": ["diffusers", "AutoencoderKLCosmos"],
                   "text_encoder": ["transformers", "T5EncoderModel"],
                   "scheduler": ["diffusers", "EDMEulerScheduler"]}, f, indent=2)
    os.makedirs(os.path.join(d, "transformer"))
    with open(os.path.join(d, "transformer", "config.json"), "w") as f:
        json.dump({"_class_name": "CosmosTransformer3DModel", "num_layers": 1}, f)
    save_file({"proj.weight": torch.ones(2, 2, dtype=torch.bfloat16)},
              os.path.join(d, "transformer", "diffusion_pytorch_model.safetensors"))
    os.makedirs(os.path.join(d, "vae"))
    with open(os.path.join(d, "vae", "config.json"), "w") as f:
        json.dump({"_class_name": "AutoencoderKLCosmos"}, f)
    torch.save({"conv.weight": torch.zeros(1, 1, 1, 1)}, os.path.join(d, "vae", "diffusion_pytorch_model.bin"))
    os.makedirs(os.path.join(d, "text_encoder"))
    with open(os.path.join(d, "text_encoder", "config.json"), "w") as f:
        json.dump({"architectures": ["T5EncoderModel"], "d_model": 4}, f)
    save_file({"shared.weight": torch.zeros(3, 4)}, os.path.join(d, "text_encoder", "model.safetensors"))
    os.makedirs(os.path.join(d, "scheduler"))
    with open(os.path.join(d, "scheduler", "scheduler_config.json"), "w") as f:
        json.dump({"_class_name": "EDMEulerScheduler"}, f)


def main():
    warnings.filterwarnings("ignore", message="Detected pickle protocol")
    os.makedirs(OUT, exist_ok=True)
    safetensors_fixtures()
    torch_fixtures()
    unknown_global_fixture()
    malicious_fixtures()
    damaged_fixtures()
    folder_fixtures()
    expected["torch_version"] = torch.__version__
    with open(path("expected.json"), "w") as f:
        json.dump(expected, f, indent=1, sort_keys=True)
    total = 0
    for dp, _, fs in os.walk(OUT):
        total += sum(os.path.getsize(os.path.join(dp, f)) for f in fs)
    print(f"wrote fixtures to {OUT} ({total} bytes)")


if __name__ == "__main__":
    main()
