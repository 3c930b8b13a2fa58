"""Peak RSS of a loaded SmolLM2 artifact per method, at prefill and at decode shapes.

Issue 15 asks that no compressed row's loaded model peaks above fp32's, kernels' packed
copies included. Each method is compressed and saved once (the artifacts are kept in
``--out``); the kernels for the worker's inputs (a 128-token prompt, and its first token
alone: one row, a decode step's shape) are chosen in this process first, so the kernel
cache holds them; then ``python -m modelpress.bench.worker`` (the bench's own Peak RAM
column) loads the artifact in a fresh process, runs both shapes three times and reports its
``VmHWM``. A second reading runs a short greedy ``generate`` (KV cache, 16 new tokens) in a
fresh process, which is what a user's decode loop holds::

    python benchmarks/peak_rss.py [--methods fp32,int8-dynamic,int4-g128,cluster-4bit] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import torch

_GENERATE = textwrap.dedent(
    """
    import json, sys, torch
    from safetensors.torch import load_file
    from modelpress.api import load
    from modelpress.bench.worker import _peak_rss_mb
    torch.set_num_threads(int(sys.argv[3]))
    base = _peak_rss_mb()
    model = load(sys.argv[1])
    ids = load_file(sys.argv[2])["input_ids"]
    with torch.inference_mode():
        model.generate(ids, max_new_tokens=16, min_new_tokens=16, do_sample=False, pad_token_id=0)
    print(json.dumps({"peak_rss_mb": _peak_rss_mb(), "baseline_rss_mb": base}))
    """
)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--methods", default="fp32,int8-dynamic,int4-g128,gptq-4bit,cluster-4bit")
    ap.add_argument("--out", default=None, help="where the artifacts go (default: a temporary directory)")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = ap.parse_args()
    if args.methods.split(",")[0].strip() != "fp32":
        ap.error("--methods must start with fp32 (the ratios are to it)")
    torch.set_num_threads(args.threads)

    from safetensors.torch import save_file

    from modelpress.api import compress, save
    from modelpress.bench.measure import measure_memory
    from modelpress.bench.runner import _warm_kernels
    from modelpress.machine import cpu_flags, cpu_model
    from modelpress.models.builtin import resolve_model
    from modelpress.recipe import resolve_methods

    out = Path(args.out or tempfile.mkdtemp(prefix="peak-rss-"))
    out.mkdir(parents=True, exist_ok=True)
    adapter = resolve_model("smollm2")
    original = adapter.load_original(progress=False).eval()
    inputs = adapter.example_inputs(1)
    inputs_file = out / "inputs.safetensors"
    save_file({k: v.contiguous() for k, v in inputs.items()}, str(inputs_file))
    print(
        f"CPU: {cpu_model()}; flags: {', '.join(cpu_flags()) or 'none'}; torch {torch.__version__}; "
        f"{args.threads} threads"
    )
    print(
        f"SmolLM2-135M, inputs {tuple(inputs['input_ids'].shape)} and their first token; artifacts in {out}\n"
    )
    print(
        "| method | peak RSS, forward (MB) | vs fp32 | peak RSS, generate 16 tokens (MB) | vs fp32 |"
        " runtime baseline (MB) |"
    )
    print("|---|---|---|---|---|---|")
    ref: tuple[float, float] | None = None
    for label, recipe in resolve_methods(args.methods):
        path = out / label
        if not (path / "manifest.json").is_file():
            model = compress(original, recipe, **adapter.compress_kwargs())
            save(model, path, extras=adapter.artifact_extras())
            del model
        loaded = adapter.load_artifact(path)
        _warm_kernels(loaded, inputs)
        with torch.inference_mode():  # the decode buckets too (2-16 rows are not used at batch 1)
            loaded.generate(inputs["input_ids"], max_new_tokens=3, do_sample=False, pad_token_id=0)
        del loaded
        fwd = measure_memory(path, inputs_file, threads=args.threads)
        proc = subprocess.run(
            [sys.executable, "-c", _GENERATE, str(path), str(inputs_file), str(args.threads)],
            capture_output=True,
            text=True,
            check=True,
        )
        gen = json.loads(proc.stdout.strip().splitlines()[-1])
        a, b = float(fwd["peak_rss_mb"] or 0), float(gen["peak_rss_mb"])
        ref = ref or (a, b)
        print(
            f"| {label} | {a:.0f} | {a / ref[0]:.2f}x | {b:.0f} | {b / ref[1]:.2f}x | "
            f"{float(fwd['baseline_rss_mb'] or 0):.0f} |",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
