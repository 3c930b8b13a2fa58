"""Batch-1 CPU latency of a bench run's kept artifacts, timed *interleaved*: each round
runs one forward pass of every artifact in turn, so slow phases of a shared or throttled
machine hit every model alike and the ratios against the first artifact stay fair.

`modelpress bench` times one model after the other; on a cloud VM whose speed drifts by
tens of percent over a minute, two sequential p50s can differ by more than the effect being
measured (a 1.4-1.7x FLOP cut at batch 1 x 64 tokens). This script gives, per artifact, the
median latency over all rounds and the median of the per-round ratios to the reference.

    python benchmarks/interleaved_latency.py results/minilm-prune \
        fp32 prune-heads-25 prune-ffn-50 prune-structured [--rounds 300]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

from modelpress.api import load
from modelpress.bench.env import tune_allocator


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("results", type=Path, help="an output directory of `modelpress bench` (kept artifacts)")
    ap.add_argument("methods", nargs="+", help="artifact names; the first is the reference")
    ap.add_argument("--rounds", type=int, default=300)
    ap.add_argument("--warmup", type=int, default=10)
    args = ap.parse_args()
    if args.rounds < 1 or len(args.methods) < 2:
        raise SystemExit("need --rounds >= 1 and at least two methods (the first is the reference)")
    env = json.loads((args.results / "results.json").read_text())["env"]
    threads = int(env.get("threads") or torch.get_num_threads())
    torch.set_num_threads(threads)
    tune_allocator()
    inputs = load_file(str(args.results / "inputs.safetensors"))
    models = {}
    for name in args.methods:
        path = args.results / "artifacts" / name
        if not path.is_dir():
            raise SystemExit(f"{path} is missing: this needs the run's kept artifacts")
        models[name] = load(path).eval()
    times: dict[str, list[float]] = {name: [] for name in models}
    with torch.inference_mode():
        for r in range(args.warmup + args.rounds):
            for name, model in models.items():
                t0 = time.perf_counter()
                model(**inputs)
                if r >= args.warmup:
                    times[name].append((time.perf_counter() - t0) * 1e3)
    ref = args.methods[0]
    shape = "x".join(str(s) for s in next(iter(inputs.values())).shape)
    print(f"{args.results.as_posix()}: batch-1 latency, inputs {shape}, {threads} threads, ")
    print(f"{args.rounds} interleaved rounds (after {args.warmup} warm-up rounds)\n")
    print(f"| Method | p50 (ms) | p95 (ms) | speed-up vs {ref} (median of per-round ratios) |")
    print("|---|---|---|---|")
    for name, ts in times.items():
        ratio = statistics.median(a / b for a, b in zip(times[ref], ts, strict=True))
        p95 = statistics.quantiles(ts, n=20)[-1] if len(ts) > 1 else ts[0]
        print(f"| {name} | {statistics.median(ts):.2f} | {p95:.2f} | {ratio:.2f}x |")


if __name__ == "__main__":
    main()
