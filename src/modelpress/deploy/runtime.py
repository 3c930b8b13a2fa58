"""ONNX Runtime as a backend: an exported model behind the torch model's call signature.

``OnnxModel(export_dir)`` opens ``model.onnx`` in an ``onnxruntime.InferenceSession`` and
is called like the torch model (``model(input_ids=..., attention_mask=...)``), returning
an object with ``.logits`` (or the bare tensor, for models that return one), so the same
evaluation, timing and serving code runs either backend. Inputs the caller leaves out
get their neutral value (``attention_mask`` ones, ``token_type_ids`` zeros).
"""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import ArtifactError, ConfigError

__all__ = ["OnnxModel", "load_onnx"]

_NP = {"int64": np.int64, "int32": np.int32, "float32": np.float32, "float16": np.float16, "bool": np.bool_}


class OnnxModel(nn.Module):
    """An ONNX export run by ONNX Runtime (CPU), callable like the model it came from."""

    def __init__(
        self, path: str | os.PathLike, *, threads: int | None = None, meta: dict[str, Any] | None = None
    ) -> None:
        """``path``: an export directory; or, with ``meta`` (what export.json would say),
        the ONNX file itself (the exporter's check, before anything is kept)."""
        super().__init__()
        from .onnx import ONNX_FILE, read_export

        self.path = Path(path)
        if meta is None:
            self.meta = read_export(self.path)
            f = self.path / ONNX_FILE
        else:
            self.meta, f = meta, self.path
        if not f.is_file():
            raise ArtifactError(f"{self.path} holds no {ONNX_FILE}")
        try:
            import onnxruntime as ort
        except ImportError:
            raise ConfigError(
                "ONNX Runtime is not installed: pip install 'modelpress[onnx]' (the README's set-up does)"
            ) from None
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = int(threads)
        opts.inter_op_num_threads = 1
        try:
            self.session = ort.InferenceSession(str(f), sess_options=opts, providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own exception types for a bad file
            raise ArtifactError(f"ONNX Runtime cannot open {f}: {str(e).splitlines()[0][:300]}") from None
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.raw_output = bool(self.meta.get("raw_output"))
        self.config = SimpleNamespace(use_cache=False)

    def feeds(self, kwargs: dict[str, Any]) -> dict[str, np.ndarray]:
        unknown = sorted(set(kwargs) - set(self.input_names) - {"use_cache", "return_dict"})
        if unknown:
            raise ConfigError(f"the ONNX model takes {', '.join(self.input_names)}, not {', '.join(unknown)}")
        like = next((kwargs[n] for n in self.input_names if n in kwargs), None)
        out = {}
        for name in self.input_names:
            v = kwargs.get(name)
            if v is None:
                if like is None or name not in ("attention_mask", "token_type_ids"):
                    raise ConfigError(f"the ONNX model needs the input '{name}'")
                v = torch.ones_like(like) if name == "attention_mask" else torch.zeros_like(like)
            arr = v.detach().cpu().numpy() if isinstance(v, torch.Tensor) else np.asarray(v)
            want = _NP.get(str(self.meta["inputs"].get(name)), None)
            out[name] = arr.astype(want, copy=False) if want is not None else arr
        return out

    def run_logits(self, kwargs: dict[str, Any]) -> torch.Tensor:
        (logits,) = self.session.run(["logits"], self.feeds(kwargs))
        return torch.from_numpy(np.ascontiguousarray(logits)).float()

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        if args:
            kwargs = {**dict(zip(self.input_names, args, strict=False)), **kwargs}
        logits = self.run_logits(kwargs)
        return logits if self.raw_output else SimpleNamespace(logits=logits)


def load_onnx(path: str | os.PathLike, *, threads: int | None = None) -> OnnxModel:
    """Open a modelpress ONNX export (``modelpress export``) in ONNX Runtime."""
    return OnnxModel(path, threads=threads)
