"""Subprocess entry for memory measurement: ``python -m modelpress.bench.worker ARTIFACT INPUTS``.

Loads the artifact with ``modelpress.load`` in a fresh interpreter, runs inference three
times on the saved inputs and, for token inputs, on their first token alone (one row per
sequence, the shape of an LM's decode step: the kernels chosen for one row keep packed
copies of their own, which count), and prints one JSON line with the peak resident set
size (and peak CUDA memory when run on a GPU). ``baseline_rss_mb`` is the peak RSS after the imports,
before loading (model code imported), so readers can tell the model's share from the
runtime's.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
from pathlib import Path
from typing import Any


def _peak_rss_mb() -> float:
    """Peak RSS of this process image in MiB.

    On Linux this is ``VmHWM`` of ``/proc/self/status``: unlike ``ru_maxrss``, which keeps
    the high-water mark of the *parent's* memory across fork + exec (so a worker started
    by a large benchmark process would report the parent's size), ``VmHWM`` belongs to the
    address space created by exec.
    """
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return kb / (1024 * 1024) if sys.platform == "darwin" else kb / 1024


TOKEN_KEYS = ("input_ids", "attention_mask", "token_type_ids", "position_ids")


def memory_inputs(inputs: dict[str, Any]) -> list[dict[str, Any]]:
    """What the worker runs: the saved inputs and, where they are token ids of more than one
    position, their first position alone (one row per sequence)."""
    ids = inputs.get("input_ids")
    if ids is None or getattr(ids, "dim", lambda: 0)() != 2 or int(ids.shape[1]) < 2:
        return [inputs]
    one = {k: (v[:, :1] if k in TOKEN_KEYS and v.dim() == 2 else v) for k, v in inputs.items()}
    return [inputs, one]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("artifact")
    ap.add_argument("inputs")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args(argv)

    import torch
    import transformers  # imported before the baseline reading, as load() needs it
    from safetensors.torch import load_file

    from modelpress.api import load

    if args.threads:
        torch.set_num_threads(args.threads)
    onnx_export = (Path(args.artifact) / "export.json").is_file()
    if onnx_export:  # an ONNX export: the runtime is ONNX Runtime (imported before the baseline)
        import onnxruntime  # noqa: F401

        from modelpress.deploy import OnnxModel
    else:
        # Import the model's code before the baseline reading: the baseline is the runtime
        # (interpreter, torch, transformers and the model class), the rest is the artifact's.
        base = json.loads((Path(args.artifact) / "manifest.json").read_text()).get("base", {})
        if base.get("library") == "transformers":
            getattr(transformers, str(base.get("class")), None)
    baseline = _peak_rss_mb()
    device = torch.device(args.device)
    if onnx_export:
        model: torch.nn.Module = OnnxModel(args.artifact, threads=args.threads)
    else:
        model = load(args.artifact, device=device)
    inputs = {k: v.to(device) for k, v in load_file(args.inputs).items()}
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    with torch.inference_mode():
        for i, feed in enumerate(memory_inputs(inputs)):
            try:
                for _ in range(3):
                    model(**feed)
            except Exception:
                if i == 0:
                    raise
                break  # a model that takes no single-position input: the saved inputs alone
    vram = torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else None
    print(json.dumps({"peak_rss_mb": _peak_rss_mb(), "baseline_rss_mb": baseline, "peak_vram_mb": vram}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
