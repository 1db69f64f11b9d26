#!/usr/bin/env bash
# Stall benchmark (issue 9): the medium pipeline streamed within memory budgets at a throttled
# read speed, under each prefetch policy. Every configuration runs REPEATS times, interleaved,
# in separate processes; prints one line per configuration with medians (and ranges) of the
# run time (text + denoise + decode), the stall time, the stall fraction and the bytes read.
#
#   tools/bench/stall.sh [BUDGETS] [POLICIES] [REPEATS]
#   BUDGETS: comma-separated bytes (default: a quarter, three eighths and half of the weights,
#            each plus the activations); POLICIES default "planned,eager,fixed:1".
# Environment: ORRERY (the binary, default target/release/orrery), MODEL (default: a medium
# pipeline written to $TMPDIR/orrery-medium), IO (bytes/s, default 675000000: loading the
# transformer then takes about twice as long as computing it on 2 cores here).
set -euo pipefail
cd "$(dirname "$0")/../.."
ORRERY=${ORRERY:-target/release/orrery}
MODEL=${MODEL:-${TMPDIR:-/tmp}/orrery-medium}
IO=${IO:-675000000}
BUDGETS=${1:-19680240,25065200,30450160}
POLICIES=${2:-planned,eager,fixed:1}
REPEATS=${3:-5}
[ -d "$MODEL" ] || "$ORRERY" make-pipeline --out "$MODEL" --seed 0 >&2
out=$(mktemp -d)
for r in $(seq "$REPEATS"); do
  for b in ${BUDGETS//,/ }; do
    for p in ${POLICIES//,/ }; do
      "$ORRERY" generate --model "$MODEL" --prompt "a robot arm stacks red cubes" --height 64 --width 96 \
        --frames 17 --steps 3 --threads 2 --memory-budget "$b" --io-bandwidth "$IO" --prefetch "$p" \
        --out "$out/v.mp4" --json 2>/dev/null >"$out/$b-${p/:/_}-$r.json"
    done
  done
done
python3 - "$out" "$BUDGETS" "$POLICIES" <<'EOF'
import json, statistics, sys, glob
out, budgets, policies = sys.argv[1], sys.argv[2].split(","), sys.argv[3].split(",")
def med(xs):
    return f"{statistics.median(xs):.3f} ({min(xs):.3f}-{max(xs):.3f})"
print("budget B | policy | run s | stall s | stall/run | MB read")
for b in budgets:
    for p in policies:
        runs, stalls, fracs, reads = [], [], [], []
        for f in sorted(glob.glob(f"{out}/{b}-{p.replace(':', '_')}-*.json")):
            r = json.load(open(f))["runs"][0]
            st = r["stages"]
            t = st["text_seconds"] + st["denoise_seconds"] + st["decode_seconds"]
            s = r["weights_streamed"]["stall_seconds"]
            runs.append(t); stalls.append(s); fracs.append(s / t); reads.append(r["weights_streamed"]["bytes"] / 1e6)
        print(f"{b} | {p} | {med(runs)} | {med(stalls)} | {med(fracs)} | {statistics.median(reads):.0f}")
EOF
rm -rf "$out"
