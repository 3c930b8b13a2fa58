"""modelpress's chosen CPU kernels against peers, measured in one run on this CPU.

Three parts, every timing round-robin (each round runs every contender once, so a drifting
machine hits all alike); ratios are to torch fp32 eager measured in the same rounds:

- ``layers``: one Linear of MiniLM / SmolLM2 shapes at 1 and 64 rows: modelpress int8
  (W8A8, the autotuner's choice), int8 weight-only and int4-g128 (the chosen ``linear``
  kernel), against torch's own dynamic quantization (``torch.ao.quantization.quantize_dynamic``,
  fbgemm), torchao's Int8DynamicActivationInt8Weight / Int8WeightOnly / Int4WeightOnly
  (where they run on this CPU).
- ``minilm``: the MiniLM encoder (random classifier head; the weights are the packaged
  all-MiniLM-L6-v2), batch 1 x 64 tokens: the same contenders on the whole model, plus
  ONNX Runtime fp32 and ONNX Runtime dynamic int8 (``onnxruntime.quantization``).
- ``smollm2``: SmolLM2-135M greedy decode with the KV cache (HF ``generate``): a 128-token
  prompt, 64 new tokens, batch 1 and 8; decode tokens/s, time to first token, and each
  row's share of the bound ``bandwidth / bytes of weights`` (bandwidth from a copy
  micro-benchmark in the same run).

Peers come from the ``bench`` extra (``make bench-deps``). Prints markdown tables::

    python benchmarks/cpu_kernels.py [--parts layers,minilm,smollm2] [--rounds 5] [--threads 2]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

warnings.filterwarnings("ignore")


def _time_once(fn: Callable[[], Any], budget: float) -> float:
    """Mean seconds per call over a burst of about ``budget`` seconds."""
    t0 = time.perf_counter()
    fn()
    one = max(time.perf_counter() - t0, 1e-6)
    n = max(1, int(budget / one))
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t0) / n


def round_robin(fns: dict[str, Callable[[], Any]], rounds: int, budget: float) -> dict[str, float]:
    """Median seconds per call of every contender over ``rounds`` interleaved rounds."""
    for fn in fns.values():  # warm-up (kernel choice, packing, allocator)
        fn()
        fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        for k, fn in fns.items():
            times[k].append(_time_once(fn, budget))
    return {k: statistics.median(v) for k, v in times.items()}


def _table(title: str, header: list[str], rows: list[list[str]]) -> None:
    print(f"\n### {title}\n")
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join("---" for _ in header) + "|")
    for r in rows:
        print("| " + " | ".join(r) + " |")


# -- peers --------------------------------------------------------------------------------


def torch_dynamic(model: nn.Module) -> nn.Module:
    from torch.ao.quantization import quantize_dynamic

    return quantize_dynamic(copy.deepcopy(model), {nn.Linear}, dtype=torch.qint8)


def torchao(model: nn.Module, kind: str) -> nn.Module | None:
    try:
        from torchao.quantization import (
            Int4WeightOnlyConfig,
            Int8DynamicActivationInt8WeightConfig,
            Int8WeightOnlyConfig,
            quantize_,
        )
    except Exception:
        return None
    m = copy.deepcopy(model)
    try:
        if kind == "int8-dyn":
            quantize_(m, Int8DynamicActivationInt8WeightConfig())
        elif kind == "int8-wo":
            quantize_(m, Int8WeightOnlyConfig())
        else:
            from torchao.dtypes import Int4CPULayout

            m = m.to(torch.bfloat16)
            quantize_(m, Int4WeightOnlyConfig(group_size=128, layout=Int4CPULayout(), version=1))
        return m
    except Exception as e:
        print(f"  (torchao {kind} does not run here: {type(e).__name__}: {str(e)[:100]})")
        return None


def modelpress_rows(
    model: nn.Module, methods: list[str], data: Any = None, *, saved: bool = True
) -> dict[str, nn.Module]:
    """Compressed, saved and loaded back (what a user deploys); ``saved=False`` for a bare
    module that ``save`` does not take (one Linear): the same formats and kernels."""
    import modelpress as mp

    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for m in methods:
            c = mp.compress(copy.deepcopy(model), m, data=data, progress=False)
            out[f"modelpress {m}"] = mp.load(mp.save(c, Path(tmp) / m)) if saved else c
    return out


# -- parts --------------------------------------------------------------------------------

_SHAPES = [
    ("MiniLM q/k/v/o", 384, 384),
    ("MiniLM ffn up", 1536, 384),
    ("MiniLM ffn down", 384, 1536),
    ("SmolLM2 q/o", 576, 576),
    ("SmolLM2 k/v", 192, 576),
    ("SmolLM2 gate/up", 1536, 576),
    ("SmolLM2 down", 576, 1536),
]


def _layer_method(name: str) -> Any:
    """A preset name, or ``ternary-b158`` / ``binary-bwn`` on every layer: a lone Linear is
    its own output layer, which the binarization presets keep in float."""
    from modelpress.methods.binary import BinaryConfig, TernaryConfig

    if name == "ternary-b158":
        return TernaryConfig(keep_head=False, keep_first=False)
    if name == "binary-bwn":
        return BinaryConfig(keep_head=False, keep_first=False)
    return name


def part_layers(rounds: int, methods: list[str]) -> None:
    import modelpress as mp
    from modelpress import kernels

    for rows_n in (1, 64):
        out_rows = []
        for label, n, k in _SHAPES:
            torch.manual_seed(0)
            lin = nn.Sequential(nn.Linear(k, n)).eval()
            x = torch.randn(rows_n, k)
            contenders: dict[str, nn.Module] = {"torch fp32": lin}
            for name in methods:
                c = mp.compress(copy.deepcopy(lin), _layer_method(name), progress=False)
                contenders[f"modelpress {name}"] = c
            contenders["torch dynamic (fbgemm)"] = torch_dynamic(lin)
            for kind in ("int8-dyn", "int8-wo", "int4-wo"):
                m = torchao(lin, kind)
                if m is not None:
                    contenders[f"torchao {kind}"] = m
            fns = {}
            for name, m in contenders.items():
                xi = x.to(torch.bfloat16) if name == "torchao int4-wo" else x

                def call(m: nn.Module = m, xi: torch.Tensor = xi) -> Any:
                    with torch.inference_mode():
                        return m(xi)

                fns[name] = call
            t = round_robin(fns, rounds, 0.05)
            base = t["torch fp32"]
            chosen = {
                name: "; ".join(f"{n}" for per in kernels.used(m).values() for n in per)
                for name, m in contenders.items()
                if name.startswith("modelpress")
            }
            for name, secs in t.items():
                kern = f" ({chosen[name]})" if name in chosen else ""
                out_rows.append([label, f"{n}x{k}", name + kern, f"{secs * 1e6:.0f}", f"{base / secs:.2f}x"])
        _table(
            f"One Linear, {rows_n} row(s) (time per call; ratio to torch fp32 in the same rounds)",
            ["layer", "out x in", "contender (kernel chosen)", "us", "vs fp32"],
            out_rows,
        )
    del mp


def _minilm_classifier() -> nn.Module:
    from transformers import AutoConfig, BertForSequenceClassification

    from modelpress.models.sources import minilm_source

    path = minilm_source().path
    cfg = AutoConfig.from_pretrained(path, num_labels=2)
    torch.manual_seed(0)
    return BertForSequenceClassification.from_pretrained(path, config=cfg, use_kernels=False).eval()


def _ort_sessions(model: nn.Module, ids: torch.Tensor, mask: torch.Tensor, threads: int) -> dict[str, Any]:
    try:
        import onnxruntime as ort
        from onnxruntime.quantization import QuantType, quantize_dynamic
    except Exception:
        print("  (onnxruntime is not installed: make bench-deps)")
        return {}
    out = {}
    tmp = Path(tempfile.mkdtemp())
    fp32 = tmp / "model.onnx"
    torch.onnx.export(
        model,
        (ids, mask),
        str(fp32),
        input_names=["input_ids", "attention_mask"],
        output_names=["logits"],
        dynamic_axes={"input_ids": {0: "b", 1: "s"}, "attention_mask": {0: "b", 1: "s"}},
        opset_version=17,
        dynamo=False,
    )
    q8 = tmp / "model-int8.onnx"
    quantize_dynamic(str(fp32), str(q8), weight_type=QuantType.QInt8)
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    feeds = {"input_ids": ids.numpy(), "attention_mask": mask.numpy()}
    for name, p in (("ONNX Runtime fp32", fp32), ("ONNX Runtime dynamic int8", q8)):
        sess = ort.InferenceSession(str(p), so, providers=["CPUExecutionProvider"])
        out[name] = (sess, feeds)
    return out


def part_minilm(rounds: int, threads: int) -> None:
    base = _minilm_classifier()
    ids = torch.randint(1000, 20000, (1, 64), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    contenders: dict[str, Any] = {"torch fp32": base}
    contenders.update(modelpress_rows(base, ["int8-dynamic", "int8-weight", "int4-g128", "cluster-4bit"]))
    contenders["torch dynamic (fbgemm)"] = torch_dynamic(base)
    for kind in ("int8-dyn", "int8-wo"):
        m = torchao(base, kind)
        if m is not None:
            contenders[f"torchao {kind}"] = m
    with torch.inference_mode():
        ref = base(input_ids=ids, attention_mask=mask).logits
    fns: dict[str, Callable[[], Any]] = {}
    errs: dict[str, float] = {}
    for name, m in contenders.items():

        def call(m: nn.Module = m) -> Any:
            with torch.inference_mode():
                return m(input_ids=ids, attention_mask=mask).logits

        fns[name] = call
        errs[name] = float((call() - ref).norm() / ref.norm())
    for name, (sess, feeds) in _ort_sessions(base, ids, mask, threads).items():

        def run_ort(sess: Any = sess, feeds: dict[str, Any] = feeds) -> Any:
            return sess.run(None, feeds)[0]

        fns[name] = run_ort
        errs[name] = float((torch.from_numpy(run_ort()) - ref).norm() / ref.norm())
    t = round_robin(fns, rounds, 0.5)
    b = t["torch fp32"]
    rows = [[n, f"{s * 1e3:.2f}", f"{b / s:.2f}x", f"{errs[n]:.4f}"] for n, s in t.items()]
    _table(
        f"MiniLM encoder + head, batch 1 x 64 tokens, {threads} threads ({rounds} rounds)",
        ["contender", "ms", "vs fp32", "logit rel. error vs fp32"],
        rows,
    )


def bandwidth_gbs() -> float:
    """Memory copy bandwidth (read + write bytes per second) on 256 MB buffers."""
    src = torch.ones(64 << 20)  # 256 MB of float32
    dst = torch.empty_like(src)
    best = float("inf")
    for _ in range(5):
        t0 = time.perf_counter()
        dst.copy_(src)
        best = min(best, time.perf_counter() - t0)
    return 2 * src.numel() * 4 / best / 1e9


def _weight_bytes(model: nn.Module) -> int:
    """Bytes of the weights a decode step reads: floating parameters (the tied embedding
    / head once) plus the compressed formats' stored tensors."""
    from modelpress.formats.base import CompressedTensor

    seen: set[int] = set()
    total = 0
    for m in model.modules():
        if isinstance(m, CompressedTensor) and id(m) not in seen:
            seen.add(id(m))
            total += m.stored_nbytes()
    for p in model.parameters():
        if id(p) not in seen and p.dim() >= 2:
            seen.add(id(p))
            total += p.numel() * p.element_size()
    return total


def part_smollm2(rounds: int, threads: int, batches: list[int], methods: list[str]) -> None:
    from modelpress.models.builtin import resolve_model

    adapter = resolve_model("smollm2")
    base = adapter.load_original(progress=False).eval()
    tok = adapter.tokenizer
    text = adapter.text if hasattr(adapter, "text") else "The quick brown fox " * 64
    prompt_ids = tok(text, return_tensors="pt", add_special_tokens=False).input_ids[:, :128]
    contenders: dict[str, nn.Module] = {"torch fp32": base}
    contenders.update(modelpress_rows(base, methods, data=adapter))
    contenders["torch dynamic (fbgemm)"] = torch_dynamic(base)
    m = torchao(base, "int8-wo")
    if m is not None:
        contenders["torchao int8-wo"] = m
    bw = bandwidth_gbs()
    new = 64
    for batch in batches:
        ids = prompt_ids.repeat(batch, 1)
        mask = torch.ones_like(ids)

        def gen(m: nn.Module, n: int, ids: torch.Tensor = ids, mask: torch.Tensor = mask) -> Any:
            with torch.inference_mode():
                return m.generate(
                    input_ids=ids,
                    attention_mask=mask,
                    max_new_tokens=n,
                    min_new_tokens=n,
                    do_sample=False,
                    pad_token_id=tok.eos_token_id,
                )

        ttft = round_robin({k: (lambda m=m: gen(m, 1)) for k, m in contenders.items()}, rounds, 0.0)
        full = round_robin({k: (lambda m=m: gen(m, new)) for k, m in contenders.items()}, rounds, 0.0)
        rows = []
        base_tps = None
        for name, m in contenders.items():
            decode_s = max(full[name] - ttft[name], 1e-9)
            tps = batch * (new - 1) / decode_s
            base_tps = base_tps or tps
            wb = _weight_bytes(m)
            bound = bw * 1e9 / wb  # weight reads per second = tokens/s per sequence
            share = (tps / batch) / bound
            rows.append(
                [
                    name,
                    f"{tps:.1f}",
                    f"{tps / base_tps:.2f}x",
                    f"{ttft[name] * 1e3:.0f}",
                    f"{wb / 1e6:.0f}",
                    f"{bound:.1f}",
                    f"{100 * share:.0f} %",
                ]
            )
        _table(
            f"SmolLM2-135M greedy decode, batch {batch}, 128-token prompt + {new} new tokens, "
            f"{threads} threads; copy bandwidth {bw:.1f} GB/s",
            [
                "contender",
                "decode tokens/s",
                "vs fp32",
                "TTFT ms",
                "weight MB",
                "bound tok/s per sequence",
                "share of bound",
            ],
            rows,
        )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--parts", default="layers,minilm,smollm2")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--smollm2-methods", default="int8-dynamic,int8-weight,int4-g128,cluster-4bit")
    ap.add_argument(
        "--layer-methods",
        default="int8-dynamic,int8-weight,int4-g128",
        help="modelpress rows of the layers part (also ternary-b158, binary-bwn: on the lone Linear)",
    )
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from modelpress.bench.env import tune_allocator
    from modelpress.machine import cpu_flags, cpu_model

    tune_allocator()
    print(
        f"CPU: {cpu_model()}; flags: {', '.join(cpu_flags())}; torch {torch.__version__}; "
        f"{args.threads} threads"
    )
    parts = args.parts.split(",")
    if "layers" in parts:
        part_layers(args.rounds, [m for m in args.layer_methods.split(",") if m])
    if "minilm" in parts:
        part_minilm(args.rounds, args.threads)
    if "smollm2" in parts:
        part_smollm2(
            args.rounds,
            args.threads,
            [int(b) for b in args.batches.split(",")],
            args.smollm2_methods.split(","),
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
