"""SmolLM2 at 20 % fewer block parameters: plain SVD vs SVD-LLM, one pass vs sequential.

Issue 18 asks for the activation-aware low-rank perplexity at <= 1.5x fp32's and far below
plain SVD's in the same run. Each config (a ``LowRankConfig`` as JSON) compresses the same
original with the bench's own calibration data and is scored on the same test tokens::

    python benchmarks/lowrank_smollm2.py [--eval-tokens 4096] [--configs '[{"variant": "svd"}, ...]']
"""

from __future__ import annotations

import argparse
import json
import time

import torch

DEFAULT = [
    {"variant": "svd", "reduction": 0.2},
    {"variant": "svd-llm", "reduction": 0.2, "sequential": False},
    {"variant": "svd-llm", "reduction": 0.2, "sequential": True},
    {"variant": "svd-llm", "reduction": 0.2, "sequential": True, "allocation": "global"},
]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--configs", default=json.dumps(DEFAULT), help="a JSON list of LowRankConfig fields")
    ap.add_argument("--eval-tokens", type=int, default=4096)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from modelpress.api import compress
    from modelpress.machine import cpu_flags, cpu_model
    from modelpress.methods.lowrank import LowRankConfig
    from modelpress.models.builtin import resolve_model
    from modelpress.recipe import Recipe

    configs = [LowRankConfig(**c) for c in json.loads(args.configs)]
    adapter = resolve_model("smollm2", eval_tokens=args.eval_tokens)
    original = adapter.load_original(progress=False).eval()
    print(
        f"CPU: {cpu_model()}; flags: {', '.join(cpu_flags()) or 'none'}; torch {torch.__version__}; "
        f"{args.threads} threads"
    )
    ref = adapter.evaluate(original, progress=False)
    print(f"SmolLM2-135M, perplexity on the first {args.eval_tokens} test tokens\n")
    print("| config | block Linear params removed | perplexity | vs fp32 | compress s |")
    print("|---|---|---|---|---|")
    print(f"| fp32 | 0 % | {ref.value:.2f} | 1.00x | - |", flush=True)
    blocks = {n: m for n, m in original.named_modules() if ".layers." in n and type(m) is torch.nn.Linear}
    before = sum(m.weight.numel() for m in blocks.values())
    for spec, cfg in zip(json.loads(args.configs), configs, strict=True):
        t0 = time.perf_counter()
        model = compress(original, Recipe([cfg]), progress=False, **adapter.compress_kwargs())
        took = time.perf_counter() - t0
        after = sum(
            p.numel()
            for n, m in model.named_modules()
            if ".layers." in n and n.count(".") == 4  # model.layers.i.self_attn.q_proj
            for p in m.parameters()
            if p.dim() == 2
        )
        ev = adapter.evaluate(model, reference=ref.predictions, progress=False)
        print(
            f"| `{json.dumps(spec)}` | {100 * (1 - after / before):.1f} % | {ev.value:.2f} | "
            f"{ev.value / ref.value:.2f}x | {took:.0f} |",
            flush=True,
        )
        del model
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
