"""The runtime: runs a loaded model (one per replica) on batches of requests.

``ClassifierRuntime(path)`` opens a modelpress artifact (``modelpress.load``: compressed
layers on the kernels chosen for this machine) or an ONNX export (``OnnxModel``: ONNX
Runtime) with the tokenizer stored next to it, and classifies lists of texts: one padded
batch per call (padding to the longest text of the batch, which is what length buckets
keep small).
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any

import torch

from ..errors import ArtifactError, ConfigError

__all__ = ["ClassifierRuntime"]


class ClassifierRuntime:
    """Text classification on a saved artifact or ONNX export."""

    task = "text-classification"

    def __init__(self, path: str | os.PathLike, *, threads: int | None = None, max_length: int = 256) -> None:
        self.path = Path(path)
        if threads:
            torch.set_num_threads(int(threads))
        tok_dir = self.path / "tokenizer"
        if not tok_dir.is_dir():
            raise ArtifactError(
                f"{self.path} has no tokenizer/ directory: serving text needs the tokenizer saved "
                "with the model "
                "(modelpress compress writes it)"
            )
        from transformers import AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(str(tok_dir))
        if (self.path / "export.json").is_file():
            from ..deploy import OnnxModel

            self.model: Any = OnnxModel(self.path, threads=threads)
            labels = self.model.meta.get("id2label")
            self.backend = "onnxruntime"
        else:
            from ..api import load

            self.model = load(self.path).eval()
            labels = getattr(getattr(self.model, "config", None), "id2label", None)
            self.backend = "torch"
            if getattr(getattr(self.model, "config", None), "num_labels", None) is None:
                raise ConfigError(f"{self.path} is not a classifier (no num_labels in its config)")
        self.labels = {int(k): str(v) for k, v in (labels or {}).items()}
        limit = getattr(self.tokenizer, "model_max_length", max_length) or max_length
        self.max_length = int(min(max_length, limit if limit < 10**6 else max_length))
        self._lock = threading.Lock()  # one batch at a time per runtime

    def length(self, text: str) -> int:
        """Tokens of one text (special tokens included), not truncated."""
        return len(self.tokenizer(text, add_special_tokens=True, truncation=False)["input_ids"])

    def run(self, texts: list[str]) -> list[dict[str, Any]]:
        """Label and scores of every text (one padded batch)."""
        enc = self.tokenizer(
            texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        )
        feed = {k: v for k, v in enc.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
        if self.backend == "onnxruntime":
            feed = {k: v for k, v in feed.items() if k in self.model.input_names}
        with self._lock, torch.inference_mode():
            logits = self.model(**feed).logits.float()
        probs = logits.softmax(-1)
        out = []
        for p in probs:
            i = int(p.argmax())
            out.append(
                {
                    "label": self.labels.get(i, str(i)),
                    "score": float(p[i]),
                    "scores": {self.labels.get(j, str(j)): float(v) for j, v in enumerate(p.tolist())},
                }
            )
        return out

    def warm_up(self, max_batch_size: int) -> None:
        """Run the batch sizes and lengths serving will see once, so the kernel choices
        (timed at first use) are made before the first request."""
        sizes = sorted({1, min(4, max_batch_size), max_batch_size})
        for n in sizes:
            for words in (4, 48):
                self.run([" ".join(["word"] * words)] * n)

    def describe(self) -> dict[str, Any]:
        info: dict[str, Any] = {"task": self.task, "backend": self.backend, "max_length": self.max_length}
        manifest = self.path / ("export.json" if self.backend == "onnxruntime" else "manifest.json")
        try:
            meta = json.loads(manifest.read_text())
            info["recipe"] = meta.get("recipe")
        except (OSError, ValueError):
            pass
        return info
