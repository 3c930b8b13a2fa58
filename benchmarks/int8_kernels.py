"""INT8 dynamic Linear vs float32 ``nn.Linear`` on the layer shapes of our models.

Times ``modelpress.nn.Int8DynamicLinear`` (per-token INT8 activations x per-channel INT8
weights through ``torch._int_mm``) against the fp32 layer it replaces and against torch's
fbgemm kernel ``quantized::linear_dynamic`` (per-tensor dynamic activations, the kernel
behind the deprecated ``torch.ao.quantization`` dynamic path), one after the other in the
same process, and prints the ratios. Shapes: MiniLM (384 -> 384 / 1536 and back) and
SmolLM2 (576 -> 1536, 1536 -> 576, 576 -> 49152 LM head), for 64 tokens (batch 1 of the
benchmark) and 2048 tokens (batch 32 x 64).

    python benchmarks/int8_kernels.py [--threads N]
"""

from __future__ import annotations

import argparse
import warnings

import torch
from torch import nn

from modelpress.bench.env import cpu_flags, cpu_model, tune_allocator
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


def _fbgemm(lin: nn.Linear, q: Int8DynamicLinear):
    """torch's fbgemm dynamic INT8 linear on the same INT8 weights, or None if absent."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            w = torch.quantize_per_channel(
                q.weight.decode(),
                q.weight.scale.flatten().double(),
                torch.zeros(q.out_features, dtype=torch.long),
                0,
                torch.qint8,
            )
            packed = torch.ops.quantized.linear_prepack(w, lin.bias.detach())
        return lambda x: torch.ops.quantized.linear_dynamic(x, packed, True)
    except (RuntimeError, AttributeError):
        return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--default-allocator", action="store_true", help="keep glibc's default malloc thresholds")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    allocator = tune_allocator() if not args.default_allocator else "system default"
    print(
        f"CPU: {cpu_model()} ({', '.join(cpu_flags())}); {args.threads} threads; torch {torch.__version__}; "
        f"allocator: {allocator}"
    )
    print(
        "| layer | in -> out | tokens | fp32 ms | modelpress int8 ms | fbgemm dynamic ms | int8 vs fp32 "
        "| fbgemm vs int8 | rel. error int8 | rel. error fbgemm |\n" + "|---" * 10 + "|"
    )
    for name, k, n in SHAPES:
        lin = nn.Linear(k, n)
        q = Int8DynamicLinear.from_float(lin)
        fb = _fbgemm(lin, q)
        for m in (64, 2048):
            if n > 10000 and m > 64:
                continue
            # activations with a few large channels, as transformers have (Dettmers et al. 2022)
            x = torch.randn(m, k)
            x[:, : max(1, k // 100)] *= 20
            with torch.inference_mode():
                t_fp = time_callable(lambda: lin(x), min_runs=30, min_seconds=1.0)  # noqa: B023
                t_q = time_callable(lambda: q(x), min_runs=30, min_seconds=1.0)  # noqa: B023
                t_fb = time_callable(lambda: fb(x), min_runs=30, min_seconds=1.0) if fb else None  # noqa: B023
                ref = lin(x)
                err_q = ((q(x) - ref).norm() / ref.norm()).item()
                err_fb = ((fb(x) - ref).norm() / ref.norm()).item() if fb else float("nan")
            fb_ms = f"{t_fb.p50_ms:.3f}" if t_fb else "n/a"
            fb_ratio = f"{t_q.p50_ms / t_fb.p50_ms:.2f}x" if t_fb else "n/a"
            print(
                f"| {name} | {k} -> {n} | {m} | {t_fp.p50_ms:.3f} | {t_q.p50_ms:.3f} | {fb_ms} | "
                f"{t_fp.p50_ms / t_q.p50_ms:.2f}x | {fb_ratio} | {err_q:.4f} | {err_fb:.4f} |"
            )


if __name__ == "__main__":
    main()
