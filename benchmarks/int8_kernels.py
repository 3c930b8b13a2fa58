"""INT8 dynamic Linear vs float32 ``nn.Linear`` on the layer shapes of our models.

Times ``modelpress.nn.Int8DynamicLinear`` (per-token INT8 activations x per-channel INT8
weights through ``torch._int_mm``) against the fp32 layer it replaces, one after the other
in the same process, and prints the ratio. Shapes: MiniLM (384 -> 384 / 1536 and back) and
SmolLM2 (576 -> 1536, 1536 -> 576, 576 -> 49152 LM head), for 64 tokens (batch 1 of the
benchmark) and 2048 tokens (batch 32 x 64).

    python benchmarks/int8_kernels.py [--threads N]
"""

from __future__ import annotations

import argparse

import torch
from torch import nn

from modelpress.bench.env import cpu_flags, cpu_model
from modelpress.bench.measure import time_callable
from modelpress.nn import Int8DynamicLinear

SHAPES = [
    ("MiniLM attn q/k/v/o", 384, 384),
    ("MiniLM FFN up", 384, 1536),
    ("MiniLM FFN down", 1536, 384),
    ("SmolLM2 FFN up", 576, 1536),
    ("SmolLM2 FFN down", 1536, 576),
    ("SmolLM2 LM head", 576, 49152),
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"CPU: {cpu_model()} ({', '.join(cpu_flags())}); {args.threads} threads; torch {torch.__version__}")
    print("| layer | in -> out | tokens | fp32 ms | int8 ms | speed-up |\n|---|---|---|---|---|---|")
    for name, k, n in SHAPES:
        lin = nn.Linear(k, n)
        q = Int8DynamicLinear.from_float(lin)
        for m in (64, 2048):
            if n > 10000 and m > 64:
                continue
            x = torch.randn(m, k)
            with torch.inference_mode():
                t_fp = time_callable(lambda: lin(x), min_runs=30, min_seconds=1.0)  # noqa: B023
                t_q = time_callable(lambda: q(x), min_runs=30, min_seconds=1.0)  # noqa: B023
            print(
                f"| {name} | {k} -> {n} | {m} | {t_fp.p50_ms:.3f} | {t_q.p50_ms:.3f} | "
                f"{t_fp.p50_ms / t_q.p50_ms:.2f}x |"
            )


if __name__ == "__main__":
    main()
