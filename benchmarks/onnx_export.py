"""ONNX exports in ONNX Runtime against ONNX Runtime's own quantize_dynamic and torch, one run.

    python benchmarks/onnx_export.py [--rounds 7] [--threads 2]

MiniLM (the default model, fine-tuned; cached by ``modelpress bench``): modelpress's
``int8-dynamic``, ``int4-g128`` and ``gptq-4bit`` artifacts exported with ``modelpress
export`` (MatMulNBits at accuracy levels 0 and 4) and the fp32 export quantized by
``onnxruntime.quantization.quantize_dynamic`` (its defaults, QInt8), timed round-robin
(every contender once per round, median of the rounds) at batch 1 and 32 x 64 tokens next
to torch fp32 eager; plus each export's size and test accuracy. ``int8-dynamic`` is also
exported with each DynamicQuantizeMatMul weight type forced (int8, and the same integers as
uint8 with zero point 128), next to ``quantize_dynamic`` with QUInt8 weights: on CPUs
without VNNI ONNX Runtime's u8 x s8 path sums pairs in saturating int16. Prints a markdown
table.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

import modelpress as mp
from modelpress.bench.env import cpu_flags, cpu_model
from modelpress.deploy import OnnxModel, export_onnx
from modelpress.models.builtin import resolve_model


def _time(fn: Any, budget: float = 0.6) -> float:
    fn()
    n, t0 = 0, time.perf_counter()
    while n < 3 or time.perf_counter() - t0 < budget:
        fn()
        n += 1
    return (time.perf_counter() - t0) / n * 1e3


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    task = resolve_model("minilm")
    original = task.load_original(progress=False)
    work = Path(tempfile.mkdtemp(prefix="modelpress-onnx-bench-"))
    try:
        inp = task.example_inputs(2)
        checks = [inp, task.example_inputs(8)]
        contenders: dict[str, Any] = {"torch fp32": original}
        sizes: dict[str, int] = {"torch fp32": mp.artifact_bytes(mp.save(original, work / "fp32"))}
        export_onnx(original, work / "fp32-onnx", inp, check_inputs=checks)
        contenders["ORT fp32 (export)"] = OnnxModel(work / "fp32-onnx", threads=args.threads)
        from onnxruntime.quantization import QuantType, quantize_dynamic

        q = work / "ortq"
        shutil.copytree(work / "fp32-onnx", q)
        quantize_dynamic(
            str(work / "fp32-onnx" / "model.onnx"), str(q / "model.onnx"), weight_type=QuantType.QInt8
        )
        contenders["ORT quantize_dynamic (QInt8)"] = OnnxModel(q, threads=args.threads)
        qu = work / "ortq-u8"
        shutil.copytree(work / "fp32-onnx", qu)
        quantize_dynamic(
            str(work / "fp32-onnx" / "model.onnx"), str(qu / "model.onnx"), weight_type=QuantType.QUInt8
        )
        contenders["ORT quantize_dynamic (QUInt8)"] = OnnxModel(qu, threads=args.threads)
        for method, levels in (("int8-dynamic", (4,)), ("int4-g128", (0, 4)), ("gptq-4bit", (4,))):
            art = mp.save(mp.compress(original, method, data=task, progress=False), work / method)
            model = mp.load(art)
            contenders[f"torch {method}"] = model
            sizes[f"torch {method}"] = mp.artifact_bytes(art)
            for level in levels:
                name = f"ORT {method} (export" + (
                    f", accuracy level {level})" if "int4" in method or "gptq" in method else ")"
                )
                out = work / f"{method}-onnx-{level}"
                r = export_onnx(model, out, inp, check_inputs=checks, accuracy_level=level)
                if "int8_fallback" in r.check:
                    name += f" [{r.check['int8_fallback'].rpartition('written as ')[2]}]"
                contenders[name] = OnnxModel(out, threads=args.threads)
            if method == "int8-dynamic":  # both DynamicQuantizeMatMul weight types, forced
                for form in ("dynamic", "dynamic-u8"):
                    out = work / f"{method}-onnx-{form}"
                    export_onnx(model, out, inp, check_inputs=checks, int8_form=form, tolerance=1.0)
                    key = f"ORT {method} (export, int8_form={form})"
                    contenders[key] = OnnxModel(out, threads=args.threads)
        for name, m in contenders.items():
            if isinstance(m, OnnxModel):
                sizes[name] = (m.path / "model.onnx").stat().st_size
        results: dict[str, dict[int, list[float]]] = {k: {1: [], 32: []} for k in contenders}
        feeds = {b: task.example_inputs(b) for b in (1, 32)}
        for _ in range(args.rounds):
            for name, m in contenders.items():
                for b, feed in feeds.items():

                    def call(m: Any = m, feed: dict = feed) -> None:
                        with torch.inference_mode():
                            m(**feed)

                    results[name][b].append(_time(call, 0.5 if b == 1 else 0.0))
        acc = {}
        ref = task.evaluate(original, progress=False)
        for name, m in contenders.items():
            acc[name] = task.evaluate(m, reference=ref.predictions, progress=False)
        base1 = statistics.median(results["torch fp32"][1])
        base32 = statistics.median(results["torch fp32"][32])
        print(
            f"CPU: {cpu_model()} ({', '.join(cpu_flags())}); {args.threads} threads; {args.rounds} rounds\n"
        )
        print(
            "| contender | size | batch 1 ms | vs torch fp32 | batch 32 samples/s | vs torch fp32 "
            "| accuracy | agreement |"
        )
        print("|---|---|---|---|---|---|---|---|")
        for name in contenders:
            t1, t32 = statistics.median(results[name][1]), statistics.median(results[name][32])
            ev = acc[name]
            print(
                f"| {name} | {sizes[name] / 1e6:.2f} MB | {t1:.2f} | {base1 / t1:.2f}x | {32e3 / t32:.1f} | "
                f"{base32 / t32:.2f}x | {100 * ev.value:.2f}% | {100 * (ev.agreement or 0):.2f}% |"
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
