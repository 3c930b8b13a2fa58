"""Re-measure latency, throughput and peak RAM of every artifact a `modelpress bench` run
kept, and rewrite its reports (results.json / .csv / .md / .png).

For runs whose timing was disturbed (another job shared the CPU): the artifacts, sizes and
quality figures stay as measured; CPU latency (batch 1), throughput (batch 32) and peak RAM
are measured again one artifact after the other, exactly as `modelpress bench` measures them
(same inputs, same threads, same allocator tuning, fresh worker process for memory). The
report says that it was re-timed and by which command.

    python benchmarks/retime.py results/minilm-quant [--model minilm]
"""

from __future__ import annotations

import argparse
import gc
import json
from pathlib import Path

import torch
from safetensors.torch import load_file

from modelpress.api import load
from modelpress.bench.env import tune_allocator
from modelpress.bench.measure import measure_memory, time_model
from modelpress.bench.report import markdown, write_reports
from modelpress.bench.runner import _add_notes
from modelpress.models.builtin import resolve_model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "results", type=Path, help="an output directory of `modelpress bench` (run with kept artifacts)"
    )
    ap.add_argument(
        "--model", default="minilm", help="the built-in model the run measured (for batch-32 inputs)"
    )
    args = ap.parse_args()
    result = json.loads((args.results / "results.json").read_text())
    env = result["env"]
    threads = int(env.get("threads") or torch.get_num_threads())
    torch.set_num_threads(threads)
    tune_allocator()
    inputs_file = args.results / "inputs.safetensors"
    inputs1 = load_file(str(inputs_file))
    inputs32 = resolve_model(args.model).example_inputs(32)
    for row in result["rows"]:
        path = args.results / "artifacts" / row["method"]
        if not path.is_dir():
            raise SystemExit(f"{path} is missing: re-timing needs the run's artifacts")
        model = load(path)
        lat = time_model(model, inputs1, "cpu")
        thr = time_model(model, inputs32, "cpu", min_runs=5, max_seconds=20.0, warmup=1)
        mem = measure_memory(path, inputs_file, threads=threads)
        row.update(
            cpu_latency_ms_p50=lat.p50_ms,
            cpu_latency_ms_p95=lat.p95_ms,
            cpu_throughput=32 / (thr.p50_ms / 1e3),
            peak_rss_mb=mem.get("peak_rss_mb"),
            baseline_rss_mb=mem.get("baseline_rss_mb"),
            latency_runs=lat.runs,
            throughput_runs=thr.runs,
        )
        print(
            f"{row['method']}: p50 {lat.p50_ms:.2f} ms, {row['cpu_throughput']:.1f}/s, "
            f"{mem.get('peak_rss_mb'):.0f} MB",
            flush=True,
        )
        del model
        gc.collect()
    _add_notes(result["rows"])
    command = env.get("command") or "modelpress bench"
    retimed = f"python benchmarks/retime.py {args.results.as_posix()} --model {args.model}"
    result["env"] = {**env, "retimed_by": retimed}
    write_reports(result, args.results, command=command)
    print(markdown(result, command))


if __name__ == "__main__":
    main()
