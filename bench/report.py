"""Writes BENCHMARKS.md from the JSON lines `bench/run.sh` leaves in build/bench."""
import datetime
import json
import os
import pathlib
import platform
import sys

out_dir, target = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])


def rows(name):
    p = out_dir / f"{name}.jsonl"
    if not p.exists():
        return [], None
    stamp = datetime.datetime.fromtimestamp(p.stat().st_mtime, datetime.timezone.utc)
    lines = [json.loads(l) for l in p.read_text().splitlines() if l.startswith("{")]
    return lines, stamp.strftime("%Y-%m-%d %H:%M UTC")


def cpu():
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


md = [
    "# Benchmarks",
    "",
    "Reproduce with `make bench` (all parts, about 5 minutes after the build) or one part:",
    "`bench/run.sh overhead`, `bench/run.sh decide`, `bench/run.sh footprint`. This file is",
    "rewritten from the run's results (`build/bench/*.jsonl`) by `bench/report.py`.",
    "",
    f"Machine: {cpu()}, {os.cpu_count()} cores; shared and noisy, so every headline figure is",
    "a ratio against a reference measured in the same run, with the absolute numbers beside it.",
    "",
]

over, when = rows("overhead")
if over:
    md += [
        "## Gateway overhead",
        "",
        f"Run {when}. The same Classify request (`tiny-classify`, the 9.6k-parameter test",
        "classifier, so the model's own time is small and the gateway's share shows) sent",
        "straight to the agent and through the gateway, alternating, open loop at a fixed total",
        "rate; latency from each request's scheduled send time. Both on this box, with the",
        "agent, the gateway and the load generator sharing its cores.",
        "",
        "| rate (req/s) | direct p50 / p99 (ms) | gateway p50 / p99 (ms) | added p50 / p99 (ms) | ratio p50 / p99 | errors direct / gateway | gateway RSS (MB) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in over:
        d, g = r["direct"], r["gateway"]
        md.append(
            f"| {r['rate_rps']} | {d['p50_ms']:.2f} / {d['p99_ms']:.2f} | {g['p50_ms']:.2f} / {g['p99_ms']:.2f} "
            f"| {r['added_p50_ms']:.2f} / {r['added_p99_ms']:.2f} | {r['ratio_p50']:.2f} / {r['ratio_p99']:.2f} "
            f"| {d['errors']} / {g['errors']} | {r['gateway_peak_rss_mb']:.1f} |"
        )
    md.append("")

dec, when = rows("decide")
if dec:
    base = dec[0]["median_us"]
    md += [
        "## Routing decision",
        "",
        f"Run {when}. `decide()` (pure: policy + fleet snapshot + request) with 10 models per",
        "node, criterion median with its 95% interval; the reference is the 10-node fleet in",
        "the same run.",
        "",
        "| nodes × models | median (µs) | 95% interval (µs) | vs 10 nodes | per model (ns) |",
        "|---|---|---|---|---|",
    ]
    for r in dec:
        md.append(
            f"| {r['nodes']} × 10 | {r['median_us']:.2f} | {r['ci_low_us']:.2f} – {r['ci_high_us']:.2f} "
            f"| {r['median_us'] / base:.1f}× | {r['median_us'] * 1e3 / r['models']:.0f} |"
        )
    md.append("")

foot, when = rows("footprint")
if foot:
    f = foot[0]
    a0, a1, p = f["agent_no_models"], f["agent_one_model"], f["python_onnxruntime_session"]
    md += [
        "## Footprint",
        "",
        f"Run {when}, median of {f['runs']}. Cold start is spawn → `READY=1` on the systemd",
        f"notify socket; memory is resident set size half a second after ready. The reference",
        f"is Python importing onnxruntime and creating a session on the same `{f['model']}`",
        "file with one thread.",
        "",
        "| | ready (ms) | RSS (MB) |",
        "|---|---|---|",
        f"| agent, no models | {a0['ready_ms']:.0f} | {a0['rss_mb']:.1f} |",
        f"| agent, `{f['model']}` | {a1['ready_ms']:.0f} | {a1['rss_mb']:.1f} |",
        f"| Python onnxruntime session, same file | {p['ready_ms']:.0f} | {p['rss_mb']:.1f} |",
        f"| **agent ÷ Python** | **{f['ratio_ready_agent_vs_python']:.2f}×** | **{f['ratio_rss_agent_vs_python']:.2f}×** |",
        "",
        "Binary sizes (release, with line tables): "
        + ", ".join(f"`{k}` {v:.1f} MB" for k, v in f["binary_mb"].items())
        + ".",
        "",
    ]

md += [
    "## Not measured yet",
    "",
    "Agent embeddings against Python onnxruntime (17 and 114 tokens; concurrency 1, 4, 16 with",
    "and without batching), SmolLM2 decode and time to first token against a Python greedy",
    "loop and llama.cpp, the memory-bandwidth roofline, and fleet scale (1,000 and 10,000",
    "simulated agents): still to be built.",
    "",
]
target.write_text("\n".join(md))
