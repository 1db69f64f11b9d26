#!/usr/bin/env bash
# Interleaves orrery and PyTorch on the same op cases (BENCHMARKS.md §Method):
#   tools/bench/compare.sh [rounds] [cases...]
# Prints one JSON line per run; needs .venv-ref (tools/reference/requirements.txt).
set -euo pipefail
cd "$(dirname "$0")/../.."
rounds=${1:-3}; shift || true
cases=${*:-gemm1024 gemm2048 attn1024 attn4096 conv}
cargo build --release -q -p orrery-runtime --example bench_ops
bin=target/release/examples/bench_ops
echo "# loadavg before: $(cat /proc/loadavg)" >&2
for r in $(seq "$rounds"); do
  for c in $cases; do
    .venv-ref/bin/python tools/bench/torch_ops.py "$c" --threads 2 --runs 3
    "$bin" "$c" --threads 2 --runs 3
  done
done
