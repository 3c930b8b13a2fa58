"""What the re-quantizing kernels cost an LM: SmolLM2 perplexity per kernel tolerance.

    python benchmarks/requant_quality.py [--eval-tokens 2048] [--methods int4-g128]

``int_mm_requant`` / ``fbgemm_requant`` run a weight-only layer as per-row int8 weights x
per-token int8 activations; the autotuner accepts them where a layer's relative error is
within their tolerance. For each tolerance (and the exact reference kernels) this loads
the compressed SmolLM2 in a fresh kernel cache, lets the tuner choose, and measures the
perplexity on the first ``--eval-tokens`` test tokens, with the kernels chosen.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import tempfile

import torch

import modelpress as mp
from modelpress import kernels
from modelpress.bench.env import cpu_flags, cpu_model
from modelpress.kernels import autotune
from modelpress.kernels.dispatch import KERNELS
from modelpress.models.builtin import resolve_model

REQUANT = ("int_mm_requant", "fbgemm_requant")


def _set_tolerance(tol: float) -> None:
    for op, ks in KERNELS.items():
        KERNELS[op] = [dataclasses.replace(k, tolerance=tol) if k.name in REQUANT else k for k in ks]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--eval-tokens", type=int, default=2048)
    ap.add_argument("--methods", default="int4-g128")
    ap.add_argument("--tolerances", default="0.05,0.03,0.02")
    args = ap.parse_args()
    torch.set_num_threads(2)
    task = resolve_model("smollm2", eval_tokens=args.eval_tokens)
    original = task.load_original(progress=False)
    print(
        f"CPU: {cpu_model()} ({', '.join(cpu_flags())}); "
        f"perplexity on the first {args.eval_tokens} test tokens\n"
    )
    print("| method | kernels | perplexity | vs reference kernels | linear kernels chosen |")
    print("|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as work:
        for method in args.methods.split(","):
            path = mp.save(
                mp.compress(original, method, data=task, progress=False), os.path.join(work, method)
            )
            ref = None
            for setting in ["reference", *args.tolerances.split(",")]:
                os.environ["MODELPRESS_KERNEL_CACHE"] = tempfile.mkdtemp(dir=work)
                autotune.clear_memory()
                if setting == "reference":
                    kernels.force("linear", "reference")
                else:
                    kernels.force("linear", None)
                    _set_tolerance(float(setting))
                model = mp.load(path)
                ppl = task.evaluate(model, progress=False).value
                ref = ppl if ref is None else ref
                used = kernels.used(model).get("linear", {})
                label = (
                    "reference (exact)" if setting == "reference" else f"tuned, requant tolerance {setting}"
                )
                print(
                    f"| {method} | {label} | {ppl:.3f} | {100 * (ppl / ref - 1):+.1f} % | "
                    + ", ".join(f"{k} x{v}" for k, v in sorted(used.items(), key=lambda kv: -kv[1]))
                    + " |"
                )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
