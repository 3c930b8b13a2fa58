"""Deployment: ONNX export (``export``) and ONNX Runtime as a backend (``OnnxModel``).

``modelpress.export(model_or_artifact, out_dir, data=adapter)`` writes an ONNX model that
keeps the compressed size where ONNX Runtime has an operator for the format, runs it in
ONNX Runtime on real inputs and compares it with the torch model (and, with
``evaluate=True``, the task metric of both). Needs ``onnx`` and ``onnxruntime`` (the
``onnx`` extra, installed by the README's set-up). See docs/export.md.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError
from .onnx import ExportError, ExportMismatch, ExportReport, export_onnx, plan, read_export
from .runtime import OnnxModel, load_onnx

__all__ = [
    "ExportError",
    "ExportMismatch",
    "ExportReport",
    "OnnxModel",
    "export",
    "export_onnx",
    "load_onnx",
    "plan",
    "read_export",
]

FORMATS = ("onnx",)


def _metric_drop(metric: str, torch_value: float, onnx_value: float) -> float:
    """How much worse the ONNX model is: accuracy in points, perplexity in percent."""
    if metric == "accuracy":
        return 100 * (torch_value - onnx_value)
    if metric == "perplexity":
        return 100 * (onnx_value / torch_value - 1)
    return abs(torch_value - onnx_value)


def export(
    model: nn.Module | str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    format: str = "onnx",
    data: Any = None,
    inputs: dict[str, torch.Tensor] | None = None,
    evaluate: bool = False,
    metric_tolerance: float = 1.0,
    allow_decoded: bool = False,
    accuracy_level: int = 4,
    opset: int = 18,
    tolerance: float | None = None,
    threads: int | None = None,
) -> ExportReport:
    """Export a model (or a saved artifact's directory) for deployment.

    ``data``: a task adapter (``modelpress.models``) whose ``example_inputs`` trace and
    check the export (or pass ``inputs``). ``evaluate``: also run the task metric on
    the ONNX model and the torch model; the export fails when the ONNX model is worse by
    more than ``metric_tolerance`` (accuracy: points; perplexity: percent).
    """
    if format not in FORMATS:
        raise ConfigError(f"export format must be one of {', '.join(FORMATS)}, got {format!r}")
    tokenizer = None
    image = None  # an image model's preprocessing, kept in export.json (``"image"``) for serving
    if isinstance(model, (str, os.PathLike)):
        from ..api import load
        from ..data.images import PREPROCESSING_FILE, ImageInput

        art = Path(model)
        model = load(art)
        tok_dir = art / "tokenizer"
        if tok_dir.is_dir():
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(str(tok_dir))
        if (art / PREPROCESSING_FILE).is_file():
            image = ImageInput.read(art / PREPROCESSING_FILE).to_dict()
    if image is None and callable(getattr(data, "image_input", None)):
        image = data.image_input().to_dict()
    if not isinstance(model, nn.Module):
        raise ConfigError(
            f"export takes a torch nn.Module or an artifact directory, got {type(model).__name__}"
        )
    if tokenizer is None and data is not None:
        tokenizer = getattr(data, "tokenizer", None)
    if inputs is None:
        if data is None:
            raise ConfigError("export needs example inputs: pass data= (a task adapter) or inputs=")
        inputs = data.example_inputs(2)
        check_inputs = [inputs, data.example_inputs(8)]
    else:
        check_inputs = [inputs]
    extra = None
    if evaluate:
        if data is None:
            raise ConfigError("evaluate=True needs data= (a task adapter)")
        ref = data.evaluate(model, progress=False)

        def extra(onnx_model: OnnxModel) -> dict[str, Any]:
            got = data.evaluate(onnx_model, reference=ref.predictions, progress=False)
            drop = _metric_drop(ref.metric, ref.value, got.value)
            if drop > metric_tolerance:
                raise ExportError(
                    f"the ONNX export is worse than the torch model on the task: "
                    f"{ref.metric} {got.value:.4f} vs {ref.value:.4f}"
                    f" (tolerance {metric_tolerance}); nothing was written"
                )
            return {
                "metric": ref.metric,
                "torch": ref.value,
                "onnx": got.value,
                "agreement": got.agreement,
                "drop": drop,
                "tolerance": metric_tolerance,
            }

    return export_onnx(
        model,
        out_dir,
        inputs,
        check_inputs=check_inputs,
        opset=opset,
        allow_decoded=allow_decoded,
        accuracy_level=accuracy_level,
        tolerance=tolerance,
        tokenizer=tokenizer,
        threads=threads,
        extra_check=extra,
        metadata=None if image is None else {"image": image},
    )
