#!/usr/bin/env bash
# Tensor-parallel scaling on the medium pipeline: the denoising steps' milliseconds (summed
# from the progress lines, so the sessions' setup is not counted) for one rank × 1 thread,
# one rank × 2 threads, 2 in-process ranks × 1 thread (--tp 2), 2 MPI processes × 1 thread
# (mpirun -np 2 --tp 2) and, for comparison, CFG on 2 in-process ranks; RUNS runs of each,
# interleaved. Usage: tools/bench/tp.sh PIPELINE_DIR [RUNS] [HEIGHTxWIDTH]
# (the binary built with --features mpi; PIPELINE_DIR from `orrery make-pipeline --out DIR`).
set -euo pipefail
model=${1:?pipeline folder (orrery make-pipeline --out DIR)}
runs=${2:-5}
size=${3:-64x96}
bin=${ORRERY:-target/release/orrery}
args=(generate --model "$model" --prompt "a robot arm stacks red cubes" --height "${size%x*}" --width "${size#*x}"
      --frames 17 --steps 3 --seed 1 --out /tmp/orrery-tp-bench.mp4)
steps_ms() { grep -oE 'step [0-9]+/[0-9]+ \(σ [0-9.]+\) [0-9]+ ms' | awk '{s += $(NF-1)} END {print s}'; }
echo "loadavg before: $(cat /proc/loadavg)"
for i in $(seq "$runs"); do
  one=$("$bin" "${args[@]}" --threads 1 2>&1 | steps_ms)
  two_threads=$("$bin" "${args[@]}" --threads 2 2>&1 | steps_ms)
  tp=$("$bin" "${args[@]}" --threads 2 --tp 2 2>&1 | steps_ms)
  mpi=$(mpirun --allow-run-as-root --oversubscribe -np 2 "$bin" "${args[@]}" --threads 1 --tp 2 2>&1 | steps_ms)
  cfg=$("$bin" "${args[@]}" --threads 2 --cfg-parallel 2>&1 | steps_ms)
  echo "run $i ms: 1x1 $one 1x2 $two_threads tp2-inprocess $tp tp2-mpi $mpi cfg2-inprocess $cfg"
done
