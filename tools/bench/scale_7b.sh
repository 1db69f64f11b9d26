#!/usr/bin/env bash
# The runtime's scale benchmark (issue 9; not CI): a pipeline whose transformer has the real
# Cosmos-1.0-Diffusion-7B shapes with random bf16 weights (about 14 GB, written by
# `orrery make-pipeline --preset dit7b`), one transformer forward at a small latent (1 frame,
# 64 × 64, one step, no guidance), resident and then within --memory-budget 6GiB; then
# `orrery plan`'s prediction for the full 704 × 1280 × 121, 36-step run on a modelled H100.
#
#   tools/bench/scale_7b.sh [DIR]     (DIR: where to write the pipeline; default /tmp/orrery-dit7b)
set -euo pipefail
dir=${1:-/tmp/orrery-dit7b}
orrery=target/release/orrery
cargo build --release -p orrery-cli
[ -f "$dir/model_index.json" ] || /usr/bin/time -f "make-pipeline: %e s" "$orrery" make-pipeline --preset dit7b --out "$dir"
common=(generate --model "$dir" --prompt "a robot arm" --height 64 --width 64 --frames 1 --steps 1 --guidance 1 --json)
echo "== resident"
/usr/bin/time -f "%e s, max RSS %M KiB" "$orrery" "${common[@]}" --dump-tensors "$dir.resident.safetensors"
echo "== --memory-budget 6GiB"
/usr/bin/time -f "%e s, max RSS %M KiB" "$orrery" "${common[@]}" --dump-tensors "$dir.budget.safetensors" --memory-budget 6GiB
cmp "$dir.resident.safetensors" "$dir.budget.safetensors" && echo "bit-identical outputs"
echo "== plan: 704 x 1280 x 121, 36 steps, on a modelled H100"
"$orrery" plan --model "$dir" --target h100 --height 704 --width 1280 --frames 121 --steps 36 --json
