"""Summarises `tools/bench/compare.sh` output (JSON lines) as a Markdown table: per case and
side, the median of all timed runs, their range, GFLOP/s (or GB/s for memory-bound cases),
peak RSS, and the ratio PyTorch median / orrery median (> 1: orrery faster). Runs of impl
"orrery-base" (compare.sh with BASELINE_ENV) add a column: base median / orrery median.

    tools/bench/compare.sh 3 gemm1024 attn1024 > runs.jsonl
    python3 tools/bench/summarize.py runs.jsonl
"""
import json
import statistics
import sys

runs = {}
for line in open(sys.argv[1]):
    line = line.strip()
    if not line.startswith("{"):
        continue
    r = json.loads(line)
    key = (r["case"], r["impl"])
    entry = runs.setdefault(key, {"times": [], "rss": 0, "work": None})
    entry["times"].extend(r["runs_s"])
    entry["rss"] = max(entry["rss"], r.get("peak_rss_bytes", 0))
    # Work per run, recovered from the reported rate and median: bytes read for memory-bound
    # cases (copy, gemv with at most 32 rows), else FLOPs.
    rows = "".join(ch for ch in r["case"][4:].split("_")[0] if ch.isdigit())
    memory_bound = r["case"].startswith("copy") or (r["case"].startswith("gemv") and int(rows or 0) <= 32)
    if memory_bound and r.get("gbs"):
        entry["work"] = ("GB/s", r["gbs"] * r["median_s"])
    elif r.get("gflops"):
        entry["work"] = ("GFLOP/s", r["gflops"] * r["median_s"])

cases = []
for case, _ in runs:
    if case not in cases:
        cases.append(case)

has_base = any(impl == "orrery-base" for _, impl in runs)
extra = (" orrery-base ms (min–max) | base / orrery |", "---|---|") if has_base else ("", "")
print("| case | PyTorch ms (min–max) | orrery ms (min–max) | ratio | rate PyTorch / orrery | peak RSS MiB PyTorch / orrery |" + extra[0])
print("|---|---|---|---|---|---|" + extra[1])
for case in cases:
    t, o = runs.get((case, "torch")), runs.get((case, "orrery"))

    def cell(e):
        if not e:
            return "–"
        ts = e["times"]
        return f"{statistics.median(ts) * 1e3:.1f} ({min(ts) * 1e3:.1f}–{max(ts) * 1e3:.1f}), n={len(ts)}"

    def rate(e):
        if not e or not e["work"]:
            return "–"
        unit, work = e["work"]
        return f"{work / statistics.median(e['times']):.0f} {unit}"

    ratio = statistics.median(t["times"]) / statistics.median(o["times"]) if t and o else float("nan")
    rss = " / ".join(f"{e['rss'] / 2**20:.0f}" if e else "–" for e in (t, o))
    row = f"| {case} | {cell(t)} | {cell(o)} | **{ratio:.2f}** | {rate(t)} / {rate(o)} | {rss} |"
    if has_base:
        b = runs.get((case, "orrery-base"))
        vs = statistics.median(b["times"]) / statistics.median(o["times"]) if b and o else float("nan")
        row += f" {cell(b)} | {vs:.2f} |"
    print(row)
