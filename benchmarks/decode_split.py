"""Where a SmolLM2 decode step spends its time: in the compressed linear ops, or elsewhere.

Greedy decode with the KV cache (HF ``generate``), a 128-token prompt, batch 1. For each
method the whole step is timed (decode = the time of N new tokens minus the time to the
first), and the time inside ``modelpress.kernels.run`` (every compressed linear, its Python
dispatch included) is summed by a wrapper; for fp32 the same is done around
``nn.Linear.forward``. "The rest" (attention with the cache, norms, rotary embeddings,
residual adds, ``generate``'s own per-step work) is the part no linear kernel can remove:
it bounds the decode speed-up a weight format can give on this CPU at
``fp32 step / rest``. Per-shape rows say how long each layer call takes inside the model
(weights streamed from memory, not in cache as in ``cpu_kernels.py``'s layer table)::

    python benchmarks/decode_split.py [--methods fp32,int8-dynamic,int4-g128,cluster-4bit] [--tokens 33]
"""

from __future__ import annotations

import argparse
import collections
import copy
import time
from typing import Any

import torch


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--methods", default="fp32,int8-dynamic,int4-g128,cluster-4bit")
    ap.add_argument("--tokens", type=int, default=33, help="new tokens per timed generation (>= 2)")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    import modelpress as mp
    import modelpress.kernels as mk
    from modelpress.kernels import dispatch
    from modelpress.machine import cpu_flags, cpu_model
    from modelpress.models.builtin import resolve_model

    adapter = resolve_model("smollm2")
    base = adapter.load_original(progress=False).eval()
    tok = adapter.tokenizer
    text = getattr(adapter, "text", None) or "The quick brown fox " * 64
    ids = tok(text, return_tensors="pt", add_special_tokens=False).input_ids[:, :128]

    inside = [0.0]
    per: dict[tuple[str, tuple[int, ...], int], float] = collections.defaultdict(float)
    calls: collections.Counter[tuple[str, tuple[int, ...], int]] = collections.Counter()
    run = dispatch.run

    def timed_run(op: str, x: torch.Tensor, fmt: Any, **kw: Any) -> torch.Tensor:
        t0 = time.perf_counter()
        y = run(op, x, fmt, **kw)
        d = time.perf_counter() - t0
        inside[0] += d
        key = (op, tuple(int(s) for s in fmt.shape), x.numel() // int(fmt.shape[-1]))
        per[key] += d
        calls[key] += 1
        return y

    linear_forward = torch.nn.Linear.forward

    def timed_linear(self: torch.nn.Linear, x: torch.Tensor) -> torch.Tensor:
        t0 = time.perf_counter()
        y = linear_forward(self, x)
        d = time.perf_counter() - t0
        inside[0] += d
        key = ("float linear", tuple(self.weight.shape), x.numel() // self.in_features)
        per[key] += d
        calls[key] += 1
        return y

    print(
        f"CPU: {cpu_model()}; flags: {', '.join(cpu_flags()) or 'none'}; torch {torch.__version__}; "
        f"{torch.get_num_threads()} threads"
    )
    print(f"SmolLM2-135M greedy decode, batch 1, 128-token prompt, {args.tokens} new tokens\n")
    print(
        "| method | decode tok/s | ms / token | in linear ops (ms / token) | share | the rest (ms / token) "
        "| bound on the speed-up vs fp32 (fp32 step / rest) |"
    )
    print("|---|---|---|---|---|---|---|")
    fp32_step = None
    details = []
    for method in [m for m in args.methods.split(",") if m]:
        model = base if method == "fp32" else mp.compress(copy.deepcopy(base), method, progress=False)

        def gen(n: int, model: torch.nn.Module = model) -> Any:
            with torch.inference_mode():
                return model.generate(
                    input_ids=ids,
                    attention_mask=torch.ones_like(ids),
                    max_new_tokens=n,
                    min_new_tokens=n,
                    do_sample=False,
                    pad_token_id=tok.eos_token_id,
                )

        mk.run = dispatch.run = timed_run
        torch.nn.Linear.forward = timed_linear  # type: ignore[method-assign]
        try:
            gen(4)
            gen(4)  # kernels chosen, caches warm
            inside[0] = 0.0
            t0 = time.perf_counter()
            gen(1)
            t1 = time.perf_counter()
            first_inside = inside[0]
            inside[0] = 0.0
            per.clear()
            calls.clear()
            gen(args.tokens)
            t2 = time.perf_counter()
        finally:
            mk.run = dispatch.run = run
            torch.nn.Linear.forward = linear_forward  # type: ignore[method-assign]
        steps = args.tokens - 1
        decode = (t2 - t1) - (t1 - t0)
        lin = inside[0] - first_inside  # the prompt's prefill and first step taken out
        step, lin_step = decode / steps, lin / steps
        rest = step - lin_step
        fp32_step = fp32_step or (step if method == "fp32" else None)
        bound = f"{fp32_step / rest:.2f}x" if fp32_step else "-"
        print(
            f"| {method} | {1 / step:.1f} | {1e3 * step:.1f} | {1e3 * lin_step:.1f} "
            f"| {100 * lin_step / step:.0f} % | {1e3 * rest:.1f} | {bound} |"
        )
        one_row = sorted(((k, v) for k, v in per.items() if k[2] == 1), key=lambda kv: -kv[1])
        details.append((method, [(k, v / calls[k]) for k, v in one_row[:6]]))
    print("\nPer layer call at 1 row inside the model (microseconds, dispatch included):\n")
    for method, rows in details:
        cells = ", ".join(f"{k[1][0]}x{k[1][1]} {1e6 * t:.0f}" for k, t in rows)
        print(f"- {method}: {cells}")


if __name__ == "__main__":
    main()
