"""SmolLM2-135M: round-to-nearest vs GPTQ vs AWQ (and NF4) at 4, 3 and 2 bits, in one
`run_bench` (same text slice, same measurements, compression time per row).

Every Linear layer and the (tied) embedding / LM head are quantized, asymmetric, groups of
128 (rows of 576 take groups of 96, the largest divisor below 128; rows of 1536 groups of
128), so RTN and GPTQ rows of a bit width store exactly the same format and bytes; AWQ adds
one float per input column. The embedding / LM head is rounded to nearest in the RTN, GPTQ
and AWQ rows alike (NF4 in the NF4 row).
GPTQ / AWQ calibrate on 128 / 64 windows of 512 tokens of the *train* part of the speeches
(perplexity is measured on the test part).

SmolLM2's weights were Q4_1 (4-bit, blocks of 32) in the GGUF already, so 4-bit rows start
from weights that were 4-bit on another grid; the 3- and 2-bit rows show differences more.

    python benchmarks/smollm2_quant.py [--output results/smollm2-quant]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from modelpress.bench.report import markdown, write_reports
from modelpress.bench.runner import BenchOptions, run_bench
from modelpress.methods.base import PRESETS
from modelpress.methods.quantization import AWQConfig, GPTQConfig, WeightOnlyConfig
from modelpress.models.builtin import resolve_model
from modelpress.recipe import Recipe


def preset(name: str) -> tuple[str, Recipe]:
    return name, Recipe(PRESETS.get(name).build())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--output", type=Path, default=Path("results/smollm2-quant"))
    ap.add_argument("--eval-tokens", type=int, default=8192)
    args = ap.parse_args()
    methods = [
        ("fp32", Recipe()),
        preset("int4-g128"),
        preset("gptq-4bit"),
        preset("awq-4bit"),
        preset("nf4"),
        preset("int3-g128"),
        preset("gptq-3bit"),
        ("awq-3bit", Recipe([AWQConfig(bits=3, group_size=128)])),
        ("int2-g128", Recipe([WeightOnlyConfig(bits=2, group_size=128)])),
        ("gptq-2bit", Recipe([GPTQConfig(bits=2, group_size=128)])),
    ]
    task = resolve_model("smollm2", eval_tokens=args.eval_tokens)
    result = run_bench(task, methods, BenchOptions(args.output, progress=False))
    command = "python benchmarks/smollm2_quant.py"
    write_reports(result, args.output, command=command)
    print(markdown(result, command))


if __name__ == "__main__":
    main()
