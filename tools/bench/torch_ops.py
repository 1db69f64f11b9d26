"""PyTorch side of the op benchmarks (same cases and output format as
crates/orrery-runtime/examples/bench_ops.rs).

    .venv-ref/bin/python tools/bench/torch_ops.py <case> [--threads N] [--runs R]
"""
import json
import resource
import sys
import time

import torch


def case(name):
    if name.startswith("gemm"):
        n = int(name[4:])
        a, b = torch.rand(n, n) - 0.5, torch.rand(n, n) - 0.5
        return (lambda: a @ b), 2.0 * n**3
    if name.startswith("attn"):
        length = int(name[4:])
        q, k, v = (torch.rand(1, 16, length, 64) - 0.5 for _ in range(3))
        f = torch.nn.functional.scaled_dot_product_attention
        return (lambda: f(q, k, v, scale=0.125)), 16 * length * length * (4 * 64 + 10)
    if name == "conv":
        x, w = torch.rand(1, 256, 64, 64) - 0.5, torch.rand(256, 256, 3, 3) - 0.5
        return (lambda: torch.nn.functional.conv2d(x, w, padding=1)), 2.0 * 256 * 64 * 64 * 256 * 9
    raise SystemExit(f"unknown case {name}")


def main():
    args = sys.argv[1:]
    name = args[0] if args else "gemm1024"
    threads = int(args[args.index("--threads") + 1]) if "--threads" in args else 2
    runs = int(args[args.index("--runs") + 1]) if "--runs" in args else 5
    torch.set_num_threads(threads)
    fn, flops = case(name)
    times = []
    with torch.inference_mode():
        for i in range(runs + 1):
            t0 = time.perf_counter()
            fn()
            dt = time.perf_counter() - t0
            if i > 0:
                times.append(dt)
    median = sorted(times)[len(times) // 2]
    print(json.dumps({"impl": "torch", "case": name, "threads": threads, "median_s": round(median, 6),
                      "gflops": round(flops / median / 1e9, 1),
                      "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "runs_s": times}))


main()
