"""SmolLM2 at 20 % fewer block parameters: plain SVD vs SVD-LLM, one pass vs sequential.

Issue 18 asks for the activation-aware low-rank perplexity at <= 1.5x fp32's and far below
plain SVD's in the same run. Each config (a ``LowRankConfig`` as JSON) compresses the same
original with the bench's own calibration data and is scored on the same test tokens::

    python benchmarks/lowrank_smollm2.py [--eval-tokens 4096] [--configs '[{"variant": "svd"}, ...]']

A config that fine-tunes (``epochs`` > 0) trains on the train split of the same speeches the
perplexity is scored on (the test split: other tokens, same domain), which lowers perplexity by
itself; so for each such config the fp32 original is fine-tuned the same way (same epochs, lr,
max_steps, batch size, seed, every parameter) and scored too, and that row's ratio is printed
next to the plain fp32 one.
"""

from __future__ import annotations

import argparse
import copy
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
    from modelpress.training.helpers import finetune_on_task
    from modelpress.training.loop import TrainConfig

    configs = [LowRankConfig(**c) for c in json.loads(args.configs)]
    adapter = resolve_model("smollm2", eval_tokens=args.eval_tokens)
    original = adapter.load_original(progress=False).eval()
    print(
        f"CPU: {cpu_model()}; flags: {', '.join(cpu_flags()) or 'none'}; torch {torch.__version__}; "
        f"{args.threads} threads"
    )
    ref = adapter.evaluate(original, progress=False)
    print(f"SmolLM2-135M, perplexity on the first {args.eval_tokens} test tokens\n")
    cols = (
        "config | block Linear params removed | perplexity | vs fp32 | vs fp32 fine-tuned alike | compress s"
    )
    print(f"| {cols} |")
    print("|---|---|---|---|---|---|")
    print(f"| fp32 | 0 % | {ref.value:.2f} | 1.00x | - | - |", flush=True)
    tuned: dict[tuple, float] = {}
    for cfg in configs:
        key = (cfg.epochs, cfg.lr, cfg.max_steps, cfg.batch_size, cfg.seed)
        if cfg.epochs and key not in tuned:
            t0 = time.perf_counter()
            base = copy.deepcopy(original)
            train = TrainConfig(
                epochs=cfg.epochs, lr=cfg.lr, max_steps=cfg.max_steps, patience=None, seed=cfg.seed
            )
            finetune_on_task(base, adapter, train, batch_size=cfg.batch_size, seed=cfg.seed, progress=False)
            tuned[key] = adapter.evaluate(base.eval(), progress=False).value
            took = time.perf_counter() - t0
            print(
                f"| fp32 fine-tuned (epochs {cfg.epochs}, lr {cfg.lr:g}, max_steps {cfg.max_steps}) | 0 % | "
                f"{tuned[key]:.2f} | {tuned[key] / ref.value:.2f}x | 1.00x | {took:.0f} |",
                flush=True,
            )
            del base
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
        t = tuned.get((cfg.epochs, cfg.lr, cfg.max_steps, cfg.batch_size, cfg.seed)) if cfg.epochs else None
        alike = f"{ev.value / t:.2f}x" if t else "-"
        print(
            f"| `{json.dumps(spec)}` | {100 * (1 - after / before):.1f} % | {ev.value:.2f} | "
            f"{ev.value / ref.value:.2f}x | {alike} | {took:.0f} |",
            flush=True,
        )
        del model
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
