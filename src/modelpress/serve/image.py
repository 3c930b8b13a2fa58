"""The image-classification runtime: runs an image classifier's artifact (or ONNX export) on
batches of decoded images, preprocessed exactly as the bench prepared its evaluation data.

What the model takes (channels, input size, mean / std, class names, the forward's keyword)
comes from the artifact's ``preprocessing.json`` (written by ``modelpress compress`` and the
bench; an ONNX export keeps it in ``export.json``). An image artifact without it is refused:
its preprocessing cannot be guessed. The steps are those of ``data.images``: ``decode_image``
(PIL, modes as the folder reader converts them, a pixel limit checked before decoding),
``ImageInput.convert`` (grey <-> RGB, alpha dropped, bilinear resize to the input size; uint8
``(c, H, W)``) and, per batch, ``normalize`` (``/ 255``, then ``(x - mean) / std``). All
images have the same shape after preprocessing, so a batch needs no padding.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..data.images import PREPROCESSING_FILE, SERVE_FORMATS, ImageInput, decode_image
from ..errors import ArtifactError, ConfigError

__all__ = ["ImageRuntime", "is_image_model", "missing_preprocessing"]


def is_image_model(model: nn.Module) -> bool:
    """A LeNet, a torchvision architecture or a Hugging Face ``*ForImageClassification``."""
    from ..models.lenet import LeNet5, LeNet300100
    from ..models.tv import TorchvisionClassifier

    if isinstance(model, (LeNet5, LeNet300100, TorchvisionClassifier)):
        return True
    return type(model).__name__.endswith("ForImageClassification")


def missing_preprocessing(path: Path) -> ArtifactError:
    return ArtifactError(
        f"{path} is an image classifier without {PREPROCESSING_FILE}: serving needs the input size, "
        "channels, mean / std and class names it was measured with; save it with modelpress compress "
        f"(which writes them) or save(model, path, extras={{'{PREPROCESSING_FILE}': ImageInput(...).write}})"
    )


class ImageRuntime:
    """Image classification on a saved artifact (torch) or ONNX export (ONNX Runtime).

    ``decode(data)`` turns one encoded image into the model's uint8 ``(c, H, W)`` input
    (``DataError`` / ``ImageTooLarge`` for bad input: the app answers 4xx), ``run(images)``
    classifies a list of them as one batch. ``model``: the artifact already loaded (a user's
    own module: ``load(path, model=Net())``)."""

    task = "image-classification"
    can_classify = True
    can_embed = False

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        threads: int | None = None,
        model: Any = None,
    ) -> None:
        self.path = Path(path)
        try:
            import PIL  # noqa: F401  (decode_image's; missing, every request would fail)
        except ImportError:
            raise ConfigError("serving images needs Pillow: pip install 'modelpress[vision]'") from None
        if threads:
            torch.set_num_threads(int(threads))
        self.formats = SERVE_FORMATS
        if (self.path / "export.json").is_file():
            from ..deploy import OnnxModel

            self.model: Any = OnnxModel(self.path, threads=threads)
            spec = self.model.meta.get("image")
            if spec is None:
                raise ArtifactError(f"{self.path} is not an image classifier's export (no image in its meta)")
            self.input = ImageInput.from_dict(spec, f"{self.path / 'export.json'}: image")
            if self.input.input_name not in self.model.input_names:
                raise ArtifactError(
                    f"{self.path}: the export takes {', '.join(self.model.input_names)}, "
                    f"not {self.input.input_name}"
                )
            self.backend = "onnxruntime"
            self.dtype = torch.float32
        else:
            if not (self.path / PREPROCESSING_FILE).is_file():
                raise missing_preprocessing(self.path)
            self.input = ImageInput.read(self.path / PREPROCESSING_FILE)
            if model is None:
                from ..api import load

                model = load(self.path)
            self.model = model.eval()
            self.backend = "torch"
            # a cast artifact (fp16 / bf16) takes its dtype, as the bench feeds it
            self.dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
        self.labels = self._labels()
        self._lock = threading.Lock()  # one batch at a time per runtime

    def _labels(self) -> dict[int, str]:
        if self.input.class_names is not None:
            return dict(enumerate(self.input.class_names))
        names = getattr(self.model, "class_names", None)
        if isinstance(names, (list, tuple)):
            return {i: str(n) for i, n in enumerate(names)}
        id2label = getattr(getattr(self.model, "config", None), "id2label", None)
        if self.backend == "onnxruntime":
            id2label = self.model.meta.get("id2label")
        if id2label:
            return {int(k): str(v) for k, v in id2label.items()}
        n = getattr(self.model, "num_classes", None)  # a LeNet / torchvision model without names
        return {i: str(i) for i in range(n)} if isinstance(n, int) else {}

    def decode(self, data: bytes, *, max_pixels: int = 1 << 24, where: str = "the image") -> torch.Tensor:
        """One encoded image (PNG, JPEG, WebP, BMP, GIF) of at most ``max_pixels`` as the
        model's uint8 ``(c, H, W)``."""
        image = decode_image(data, max_pixels=max_pixels, formats=self.formats, where=where)
        return self.input.convert(image, where)

    def prepare(self, images: list[torch.Tensor]) -> torch.Tensor:
        """A list of ``decode`` outputs as one model-ready float batch ``(n, c, H, W)``."""
        return self.input.normalize(torch.stack(images)).to(self.dtype)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        with self._lock, torch.inference_mode():
            out = self.model(**{self.input.input_name: x})
        return getattr(out, "logits", out).float()

    def run(self, images: list[torch.Tensor]) -> list[dict[str, Any]]:
        """Label and scores of every image (one batch)."""
        probs = self.logits(self.prepare(images)).softmax(-1)
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
        """Run the batch sizes serving will see once (kernels are timed at first use)."""
        blank = torch.zeros(self.input.shape, dtype=torch.uint8)
        for n in sorted({1, min(4, max_batch_size), max_batch_size}):
            self.run([blank] * n)

    def describe(self) -> dict[str, Any]:
        c, h, w = self.input.shape
        p = self.input.prep
        info: dict[str, Any] = {
            "task": self.task,
            "backend": self.backend,
            "endpoints": ["/v1/classify"],
            "input": {
                "channels": c,
                "size": [h, w],
                "mean": None if p.mean is None else list(p.mean),
                "std": None if p.std is None else list(p.std),
            },
            "formats": list(self.formats),
            "classes": [self.labels.get(i, str(i)) for i in range(len(self.labels))] or None,
        }
        manifest = self.path / ("export.json" if self.backend == "onnxruntime" else "manifest.json")
        try:
            info["recipe"] = json.loads(manifest.read_text()).get("recipe")
        except (OSError, ValueError):
            pass
        return info
