"""Re-measure the peak RAM of every artifact a `modelpress bench` run saved.

Each artifact is loaded and run on the run's saved batch-1 inputs in a fresh process
(`modelpress.bench.worker`), exactly as `modelpress bench` does, so that a change to the
runtime can be measured without recompressing.

    python benchmarks/peak_ram.py results/smollm2-cluster-vs-rtn
"""

from __future__ import annotations

import argparse
from pathlib import Path

from modelpress.bench.measure import measure_memory


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("results", type=Path, help="an output directory of `modelpress bench`")
    args = ap.parse_args()
    inputs = args.results / "inputs.safetensors"
    print("| artifact | peak RAM (MB) | runtime before loading (MB) |\n|---|---|---|")
    for art in sorted(p for p in (args.results / "artifacts").iterdir() if p.is_dir()):
        mem = measure_memory(art, inputs)
        print(f"| {art.name} | {mem['peak_rss_mb']:.0f} | {mem['baseline_rss_mb']:.0f} |", flush=True)


if __name__ == "__main__":
    main()
