"""Where ONNX Runtime's time goes, per op type: MiniLM fp32 export, ORT's own quantize_dynamic
of it, and modelpress's int8-dynamic export (issue 16: why is one int8 graph faster than the
other on a given CPU?).

    python benchmarks/ort_profile.py [--runs 300] [--threads 1] [--batch 1]

Each graph runs ``--runs`` times on one batch of Rotten Tomatoes snippets with ONNX Runtime's
profiler on (``SessionOptions.enable_profiling``); the kernel times of its JSON trace are
summed by op type, per run. The op counts are those of the graph ONNX Runtime actually ran
(its optimised model, written with ``optimized_model_filepath``), so fusions show (e.g.
``MatMulInteger`` -> ``DynamicQuantizeMatMul``, ``Add`` + ``LayerNormalization`` ->
``SkipLayerNormalization``). Profiling adds overhead to every node alike; read the shares,
not the absolute sum, and time the graphs with benchmarks/onnx_export.py.
"""

from __future__ import annotations

import argparse
import collections
import json
import shutil
import tempfile
from pathlib import Path

import torch

import modelpress as mp
from modelpress.bench.env import cpu_flags, cpu_model
from modelpress.deploy.onnx import export_onnx
from modelpress.models.builtin import resolve_model


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=300)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    import onnx
    import onnxruntime as ort
    from onnxruntime.quantization import QuantType, quantize_dynamic

    task = resolve_model("minilm")
    original = task.load_original(progress=False)
    work = Path(tempfile.mkdtemp(prefix="modelpress-ort-profile-"))
    try:
        inp = task.example_inputs(2)
        export_onnx(original, work / "fp32", inp, check_inputs=[inp])
        shutil.copytree(work / "fp32", work / "ortq")
        quantize_dynamic(
            str(work / "fp32" / "model.onnx"), str(work / "ortq" / "model.onnx"), weight_type=QuantType.QInt8
        )
        int8 = mp.load(
            mp.save(mp.compress(original, "int8-dynamic", data=task, progress=False), work / "art")
        )
        export_onnx(int8, work / "ours", inp, check_inputs=[inp], int8_form="dynamic", tolerance=1.0)
        graphs = {
            "fp32 export": "fp32",
            "ORT quantize_dynamic (QInt8)": "ortq",
            "modelpress int8-dynamic export": "ours",
        }
        print(
            f"CPU: {cpu_model()} ({', '.join(cpu_flags())}); onnxruntime {ort.__version__}; "
            f"{args.threads} thread(s); batch {args.batch}; {args.runs} runs\n"
        )
        feed_t = task.example_inputs(args.batch)
        for label, d in graphs.items():
            so = ort.SessionOptions()
            so.intra_op_num_threads = args.threads
            so.inter_op_num_threads = 1
            so.log_severity_level = 3
            so.optimized_model_filepath = str(work / f"{d}.opt.onnx")
            so.enable_profiling = True
            so.profile_file_prefix = str(work / f"profile-{d}")
            sess = ort.InferenceSession(str(work / d / "model.onnx"), so, providers=["CPUExecutionProvider"])
            names = {i.name for i in sess.get_inputs()}
            feed = {k: v.numpy() for k, v in feed_t.items() if k in names}
            for _ in range(args.runs):
                sess.run(None, feed)
            trace = json.loads(Path(sess.end_profiling()).read_text())
            us: collections.Counter[str] = collections.Counter()
            for e in trace:
                if e.get("cat") == "Node" and str(e.get("name", "")).endswith("_kernel_time"):
                    us[e["args"]["op_name"]] += e["dur"]
            ran = onnx.load(str(work / f"{d}.opt.onnx"), load_external_data=False)
            count = collections.Counter(n.op_type for n in ran.graph.node)
            total = sum(us.values()) / args.runs
            print(f"{label}: {total / 1e3:.2f} ms of kernels per run")
            print("| op type | nodes | us per run | share |")
            print("|---|---|---|---|")
            for op, t in us.most_common(8):
                print(f"| {op} | {count[op]} | {t / args.runs:.0f} | {100 * t / args.runs / total:.1f} % |")
            rest = sum(t for op, t in us.items() if op not in dict(us.most_common(8))) / args.runs
            print(f"| (other) | | {rest:.0f} | {100 * rest / total:.1f} % |\n", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
