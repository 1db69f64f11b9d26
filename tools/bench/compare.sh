#!/usr/bin/env bash
# Interleaves orrery and PyTorch on the same op cases (BENCHMARKS.md §Method):
#   tools/bench/compare.sh [rounds] [cases...]
# Prints one JSON line per run; needs .venv-ref (tools/reference/requirements.txt).
# With BASELINE_ENV set (e.g. BASELINE_ENV=ORRERY_GEMM=crate), each round also runs orrery under
# that environment, reported as impl "orrery-base" (summarize.py adds a column for it).
set -euo pipefail
cd "$(dirname "$0")/../.."
rounds=${1:-3}; shift || true
cases=${*:-gemm1024 gemm2048 attn1024 attn4096 conv}
cargo build --release -q -p orrery-runtime --example bench_ops
bin=target/release/examples/bench_ops
echo "# loadavg before: $(cat /proc/loadavg)" >&2
# Cases of a few milliseconds take 20 runs per process on both sides: their first runs still
# pay one-time costs (allocator growth, page faults, thread start), which 3 runs would not
# get past. They also run untimed for half a second first, on both sides: a fresh orrery
# process ran its first ~0.15 s of 2-thread products up to twice as slow (BENCHMARKS.md, "a
# warm-up for the short cases"), while PyTorch's timing starts a second or so after its
# process does.
is_short() {
  case "$1" in
    gemm512 | gemm1024 | attn1024 | attn8x128_1024 | gemv*) return 0 ;;
    *) return 1 ;;
  esac
}
for r in $(seq "$rounds"); do
  for c in $cases; do
    if is_short "$c"; then runs=20 warmup=0.5; else runs=3 warmup=0; fi
    .venv-ref/bin/python tools/bench/torch_ops.py "$c" --threads 2 --runs "$runs" --warmup "$warmup"
    "$bin" "$c" --threads 2 --runs "$runs" --warmup "$warmup"
    if [ -n "${BASELINE_ENV:-}" ]; then
      env $BASELINE_ENV "$bin" "$c" --threads 2 --runs "$runs" --warmup "$warmup" | sed 's/"impl": "orrery"/"impl": "orrery-base"/'
    fi
  done
done
