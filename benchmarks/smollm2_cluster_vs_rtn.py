"""SmolLM2-135M: per-channel k-means clustering vs round-to-nearest (RTN) at matched
bits per weight, in one `run_bench` (same text slice, same measurements).

Rows: fp32; 4-bit clustering, one fp16 codebook of 16 values per output channel (k-means++
init; 4.6 bits/weight on SmolLM2, whose rows are 576 or 1536 wide), also weighted by
squared gradients on 4 training batches (SqueezeLLM's sensitivity); 4-bit RTN, asymmetric,
groups of 96 (a float32 scale + int16 zero point per 96 weights: 4.5 bits/weight); and
the same pair at 3 bits (RTN groups of 192). Every Linear layer and the (tied) embedding /
LM head are compressed.

SmolLM2's weights were Q4_1 (4-bit, blocks of 32) in the GGUF already, so RTN with
groups of 32 would reproduce that grid; groups of 96 do not, and neither do 16 values per
channel.

    python benchmarks/smollm2_cluster_vs_rtn.py [--output results/smollm2-cluster-vs-rtn]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from modelpress.bench.report import markdown, write_reports
from modelpress.bench.runner import BenchOptions, run_bench
from modelpress.methods.clustering import KMeansConfig
from modelpress.methods.quantization import WeightOnlyConfig
from modelpress.models.builtin import resolve_model
from modelpress.recipe import Recipe


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--output", type=Path, default=Path("results/smollm2-cluster-vs-rtn"))
    ap.add_argument("--eval-tokens", type=int, default=8192)
    args = ap.parse_args()

    def cluster(bits: int, **kw: object) -> Recipe:
        cfg = KMeansConfig(bits=bits, granularity="channel", codebook_dtype="float16", init="kmeans++", **kw)
        return Recipe([cfg])

    methods = [
        ("fp32", Recipe()),
        ("cluster-4bit-channel", cluster(4)),
        ("cluster-4bit-channel-fisher", cluster(4, importance="fisher", importance_batches=4)),
        ("rtn-4bit-g96", Recipe([WeightOnlyConfig(bits=4, group_size=96)])),
        ("cluster-3bit-channel", cluster(3)),
        ("rtn-3bit-g192", Recipe([WeightOnlyConfig(bits=3, group_size=192)])),
    ]
    task = resolve_model("smollm2", eval_tokens=args.eval_tokens)
    result = run_bench(task, methods, BenchOptions(args.output, progress=False))
    command = "python benchmarks/smollm2_cluster_vs_rtn.py"
    write_reports(result, args.output, command=command)
    print(markdown(result, command))


if __name__ == "__main__":
    main()
