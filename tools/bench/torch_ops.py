"""PyTorch side of the op benchmarks (same cases and output format as
crates/orrery-runtime/examples/bench_ops.rs).

    .venv-ref/bin/python tools/bench/torch_ops.py <case> [--threads N] [--runs R] [--warmup S]
"""
import json
import resource
import sys
import time

import torch


def rand(*shape):
    return torch.rand(*shape) - 0.5


def case(name):
    """(the function to time, its FLOPs, the bytes it must read at least: 0 for models)."""
    if name.startswith("gemm"):
        dims = [int(v) for v in name[4:].split("x")]
        m, k, n = dims * 3 if len(dims) == 1 else dims
        a, b = rand(m, k), rand(k, n)
        return (lambda: a @ b), 2.0 * m * k * n, 4 * (m * k + k * n)
    if name.startswith("linear"):
        # x [M, K] against a weight [N, K] as models store it (bench_ops.rs's `linear` case).
        m, k, n = (int(v) for v in name[6:].split("x"))
        x, w = rand(m, k), rand(n, k)
        return (lambda: torch.nn.functional.linear(x, w)), 2.0 * m * k * n, 4 * (m * k + n * k)
    if name.startswith("gemv") and name.endswith("_bf16"):
        # f32 activations against a bf16 weight as stored (the 7B checkpoint's dtype): PyTorch
        # widens the weight per call, as `weight.float()` in a module's forward would.
        m = int(name[4:-5])
        x, w = rand(m, 4096), rand(4096, 4096).bfloat16()
        return (lambda: torch.nn.functional.linear(x, w.float())), 2.0 * m * 4096 * 4096, 4 * m * 4096 + 2 * 4096 * 4096
    if name.startswith("gemv"):
        m = int(name[4:])
        x, w = rand(m, 4096), rand(4096, 4096)
        return (lambda: torch.nn.functional.linear(x, w)), 2.0 * m * 4096 * 4096, 4 * (m * 4096 + 4096 * 4096)
    if name.startswith("attn") or name.startswith("xattn"):
        heads, dim = 16, 64
        if name.startswith("xattn"):
            lq, lk = (int(v) for v in name[5:].split("_"))
        elif "_" in name:
            hd, length = name[4:].split("_")
            heads, dim = (int(v) for v in hd.split("x"))
            lq = lk = int(length)
        else:
            lq = lk = int(name[4:])
        q, k, v = rand(1, heads, lq, dim), rand(1, heads, lk, dim), rand(1, heads, lk, dim)
        f = torch.nn.functional.scaled_dot_product_attention
        flops = heads * lq * lk * (4 * dim + 10)
        return (lambda: f(q, k, v, scale=dim**-0.5)), flops, 4 * heads * dim * (lq + 2 * lk)
    if name.startswith("conv133_") or name.startswith("conv311_"):
        kernel = (1, 3, 3) if name.startswith("conv133_") else (3, 1, 1)
        c, extent = name[8:].split("_")
        c = int(c)
        t, h, w = (int(v) for v in extent.split("x"))
        x, wt = rand(1, c, t, h, w), rand(c, c, *kernel)
        pad = tuple(k // 2 for k in kernel)
        volume = kernel[0] * kernel[1] * kernel[2]
        flops = 2.0 * c * c * volume * t * h * w
        return (lambda: torch.nn.functional.conv3d(x, wt, padding=pad)), flops, 4 * (c * t * h * w + c * c * volume)
    if name == "conv":
        x, w = rand(1, 256, 64, 64), rand(256, 256, 3, 3)
        return (lambda: torch.nn.functional.conv2d(x, w, padding=1)), 2.0 * 256 * 64 * 64 * 256 * 9, 4 * 256 * 64 * 64
    fn, flops = model_case(name)
    return fn, flops, 0


def model_case(name):
    """The whole-model and fused-block cases: (function, FLOPs)."""
    if name in ("dit", "dit_unfused"):
        return dit_block_case()
    if name in ("t5", "t5_unfused"):
        return t5_case()
    if name in ("cosmos", "cosmos_unfused"):
        return cosmos_case()
    if name in ("vae_decode", "vae_encode"):
        return vae_case(name)
    raise SystemExit(f"unknown case {name}")


def cosmos_case():
    """diffusers CosmosTransformer3DModel: hidden 1024 (8 heads x 128), 4 layers, latent
    [1, 16, 8, 32, 32] = 2048 tokens, text [1, 512, 1024], fps 24, zero padding mask."""
    from diffusers import CosmosTransformer3DModel

    model = CosmosTransformer3DModel(in_channels=16, out_channels=16, num_attention_heads=8, attention_head_dim=128,
                                     num_layers=4, text_embed_dim=1024, adaln_lora_dim=256).eval()
    x = torch.rand(1, 16, 8, 32, 32) - 0.5
    t = torch.rand(1)
    text = torch.rand(1, 512, 1024) - 0.5
    pm = torch.zeros(1, 1, 256, 256)
    L, LT, D = 2048, 512, 1024
    per_block = 2 * L * D * D * 4 + 2 * L * D * D * 2 + 2 * LT * D * 1024 * 2 + 2 * L * D * 4 * D * 2
    per_block += 2 * 8 * L * L * 128 * 2 + 2 * 8 * L * LT * 128 * 2
    return (lambda: model(hidden_states=x, timestep=t, encoder_hidden_states=text, fps=24, padding_mask=pm)), 4 * per_block


def vae_case(name):
    """diffusers AutoencoderKLCosmos at the real CV8x8x8 widths, random weights: decode
    [1, 16, 3, 8, 8] -> [1, 3, 17, 64, 64], or encode that video."""
    from diffusers import AutoencoderKLCosmos

    model = AutoencoderKLCosmos().eval()
    if name == "vae_decode":
        z = torch.randn(1, 16, 3, 8, 8)
        return (lambda: model.decode(z).sample), 0.0
    x = torch.rand(1, 3, 17, 64, 64) * 2 - 1
    return (lambda: model.encode(x).latent_dist.mode()), 0.0


def t5_case():
    """transformers T5EncoderModel: d_model 1024, 8 heads x 128, d_ff 4096 (ReLU), 4 layers,
    512 tokens, batch 1, random weights, all-ones attention mask."""
    from transformers import T5Config, T5EncoderModel

    config = T5Config(vocab_size=32128, d_model=1024, d_kv=128, d_ff=4096, num_layers=4, num_heads=8,
                      feed_forward_proj="relu")
    model = T5EncoderModel(config).eval()
    ids = torch.randint(0, 32128, (1, 512))
    mask = torch.ones(1, 512, dtype=torch.long)
    L, D, H, DK, FF = 512, 1024, 8, 128, 4096
    flops = 4 * (2 * L * D * H * DK * 4 + 2 * L * D * FF * 2 + 2 * H * L * L * DK * 2)
    return (lambda: model(input_ids=ids, attention_mask=mask)), flops


def dit_block_case():
    """One Cosmos DiT block in plain eager torch (same math as orrery_models::cosmos::dit_block):
    hidden 1024 = 8 heads x 128, 2048 tokens, 512 text tokens, no biases."""
    F = torch.nn.functional
    L, LT, D, H, HD = 2048, 512, 1024, 8, 128

    def w(*shape):
        return (torch.rand(*shape) - 0.5) / shape[-1] ** 0.5

    x, emb, temb = torch.rand(1, L, D) - 0.5, torch.rand(1, D) - 0.5, torch.rand(1, 3 * D) - 0.5
    text, pos = torch.rand(1, LT, 1024) - 0.5, torch.rand(L, D) - 0.5
    cos, sin = torch.rand(L, HD), torch.rand(L, HD)
    mods = [(w(256, D), w(3 * D, 256)) for _ in range(3)]
    attn = [dict(q=w(D, D), k=w(D, c), v=w(D, c), o=w(D, D), nq=1 + w(HD), nk=1 + w(HD)) for c in (D, 1024)]
    ff1, ff2 = w(4 * D, D), w(D, 4 * D)

    def rms(t, weight):
        return t * torch.rsqrt(t.pow(2).mean(-1, keepdim=True) + 1e-5) * weight

    def rope(t):
        t1, t2 = t[..., : HD // 2], t[..., HD // 2 :]
        return t * cos + torch.cat([-t2, t1], -1) * sin

    def mha(h, ctx, p, use_rope):
        def heads(t):
            return t.unflatten(2, (H, HD)).transpose(1, 2)

        q, k, v = heads(F.linear(h, p["q"])), heads(F.linear(ctx, p["k"])), heads(F.linear(ctx, p["v"]))
        q, k = rms(q, p["nq"]), rms(k, p["nk"])
        if use_rope:
            q, k = rope(q), rope(k)
        o = F.scaled_dot_product_attention(q, k, v, scale=HD**-0.5)
        return F.linear(o.transpose(1, 2).flatten(2), p["o"])

    def block():
        h0 = x + pos
        act = F.silu(emb)
        out = h0
        for i, (w1, w2) in enumerate(mods):
            shift, scale, gate = (F.linear(F.linear(act, w1), w2) + temb).unsqueeze(1).chunk(3, -1)
            h = F.layer_norm(out, (D,), eps=1e-6) * (1 + scale) + shift
            if i == 0:
                y = mha(h, h, attn[0], True)
            elif i == 1:
                y = mha(h, text, attn[1], False)
            else:
                y = F.linear(F.gelu(F.linear(h, ff1)), ff2)
            out = out + gate * y
        return out

    flops = 2 * L * D * D * 4 + 2 * L * D * D * 2 + 2 * LT * D * 1024 * 2 + 2 * L * D * 4 * D * 2
    flops += 2 * H * L * L * HD * 2 + 2 * H * L * LT * HD * 2
    return block, flops


def main():
    args = sys.argv[1:]
    name = args[0] if args else "gemm1024"
    threads = int(args[args.index("--threads") + 1]) if "--threads" in args else 2
    runs = int(args[args.index("--runs") + 1]) if "--runs" in args else 5
    # --warmup S: run the case, untimed, for S seconds first (as bench_ops does).
    warmup = float(args[args.index("--warmup") + 1]) if "--warmup" in args else 0.0
    torch.set_num_threads(threads)
    fn, flops, read = case(name)
    times = []
    with torch.inference_mode():
        start = time.perf_counter()
        while time.perf_counter() - start < warmup:
            fn()
        for i in range(runs + 1):
            t0 = time.perf_counter()
            fn()
            dt = time.perf_counter() - t0
            if i > 0:
                times.append(dt)
    median = sorted(times)[len(times) // 2]
    print(json.dumps({"impl": "torch", "case": name, "threads": threads, "median_s": round(median, 6),
                      "gflops": round(flops / median / 1e9, 1), "gbs": round(read / median / 1e9, 1),
                      "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "runs_s": times}))


main()
