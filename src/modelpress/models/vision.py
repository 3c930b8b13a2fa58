"""Image classification: the LeNets of Deep Compression (``lenet.py``) on MNIST-5k or a
user's images, a torchvision architecture by name, or a local Hugging Face
image-classification directory (ViT / ConvNeXt / ResNet ...).

Where the original comes from:
- a LeNet, or a torchvision architecture without weights: random init, trained here on the
  train split (AdamW, the best validation epoch kept) and cached;
- a torchvision architecture with a safetensors weights file: used as given (its head must
  have one output per class of the data);
- a Hugging Face directory whose head has one output per class: used as given; otherwise
  fine-tuned here with a new head for the data's classes, and cached.
Trained originals are cached under the user cache dir, keyed by the model, the data's
fingerprint, the training settings and a code version.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from ..data.images import PREPROCESSING_FILE, ImageInput, ImagePreprocess, ImageSplits
from ..errors import ConfigError, DataError
from ..training.loop import DataSizedSchedule, TrainConfig, config_key, fit
from .cache import cache_key, cached_dir, read_training_note, write_training_note
from .lenet import LeNet5, LeNet300100
from .sources import NO_HUB_KERNELS, ModelSource, read_config, reading
from .tasks import TASKS, Evaluation, TaskAdapter, model_device
from .tv import TorchvisionClassifier

__all__ = ["ImageClassificationTask", "ImageModel", "ImageTraining", "LeNet5", "LeNet300100"]

log = logging.getLogger(__name__)

_TRAIN_CODE_VERSION = 1


ARCHS = {"lenet-300-100": LeNet300100, "lenet-5": LeNet5}
_LENET_NAMES = {"lenet-300-100": "LeNet-300-100", "lenet-5": "LeNet-5"}


@dataclasses.dataclass(frozen=True)
class ImageTraining:
    """lr 3e-3 chosen on the validation split over 1e-3 for both LeNets
    (``benchmarks/lenet_lr_choice.py``)."""

    train: TrainConfig = dataclasses.field(
        default_factory=lambda: TrainConfig(
            epochs=40, lr=3e-3, weight_decay=1e-4, patience=None, warmup_ratio=0.0, grad_clip=None
        )
    )
    batch_size: int = 64
    #: how ``train`` adapts to the size of the train split (None: it runs as configured)
    schedule: DataSizedSchedule | None = None


# 40 epochs where that is at least 1000 steps (MNIST-5k: 2200, unchanged), else trained until
# validation stops improving (at least 500 steps); at most 20000 steps on large data.
DEFAULT_TRAINING = ImageTraining(schedule=DataSizedSchedule(target_steps=1000, max_steps=20000))


#: a torchvision architecture trained from random init: up to 30 epochs, stopped 5 epochs
#: after the best validation accuracy (not tuned per architecture; pass ``training`` to change)
SCRATCH_TRAINING = ImageTraining(
    TrainConfig(epochs=30, lr=1e-3, weight_decay=1e-4, patience=5, warmup_ratio=0.0, grad_clip=None)
)
#: a pretrained Hugging Face backbone with a new head: 3 epochs at lr 1e-4, early-stopped
FINETUNE_TRAINING = ImageTraining(TrainConfig(epochs=3, lr=1e-4, patience=1), batch_size=32)


@dataclasses.dataclass(frozen=True)
class ImageModel:
    """Which image model: ``kind`` "lenet" (``name`` lenet-5 / lenet-300-100), "torchvision"
    (``name`` a builder such as resnet18; ``path`` an optional safetensors weights file) or
    "hf" (``source`` a local Hugging Face image-classification directory)."""

    kind: str
    name: str
    path: str | None = None
    source: ModelSource | None = None

    def __post_init__(self) -> None:
        if self.kind not in ("lenet", "torchvision", "hf"):
            raise ConfigError(f"unknown image model kind '{self.kind}'")
        if self.kind == "lenet" and self.name not in ARCHS:
            raise ConfigError(f"unknown image architecture '{self.name}' (known: {', '.join(ARCHS)})")
        if self.kind == "hf" and self.source is None:
            raise ConfigError("a Hugging Face image model needs its directory")

    @property
    def display_name(self) -> str:
        if self.kind == "lenet":
            return _LENET_NAMES[self.name]
        return self.source.name if self.source is not None else self.name

    def identity(self) -> str:
        if self.source is not None:
            return self.source.identity
        if self.path is not None:
            p = Path(self.path)
            return f"{self.name}:{p.name}:{p.stat().st_size}:{int(p.stat().st_mtime)}"
        return f"{self.kind}:{self.name}"


def _fits(model: nn.Module, state: dict[str, torch.Tensor], what: str, num_classes: int) -> None:
    """Load ``state`` into ``model`` strictly, or one ``DataError`` saying what does not fit."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} tensors missing (e.g. {', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"{len(unexpected)} not in the architecture (e.g. {', '.join(unexpected[:3])})")
        raise DataError(f"{what} does not fit: {'; '.join(parts)}")
    for k, v in state.items():
        if tuple(v.shape) != tuple(own[k].shape):
            head = v.dim() >= 1 and own[k].dim() >= 1 and v.shape[1:] == own[k].shape[1:]
            why = (
                f" (the weights have {v.shape[0]} outputs, the data has {num_classes} classes)"
                if head and own[k].shape[0] == num_classes
                else ""
            )
            raise DataError(
                f"{what} does not fit: {k} is {tuple(v.shape)} in the file, {tuple(own[k].shape)} in the "
                f"architecture{why}"
            )
    model.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()})


@TASKS.register("image-classification")
class ImageClassificationTask(TaskAdapter):
    task = "image-classification"
    metric = "accuracy"
    higher_is_better = True

    def __init__(
        self,
        arch: str | ImageModel,
        splits: ImageSplits,
        *,
        training: ImageTraining | None = None,
        eval_batch_size: int | None = None,
    ) -> None:
        spec = ImageModel("lenet", arch) if isinstance(arch, str) else arch
        self.spec = spec
        self.arch = spec.name
        self.splits = splits
        self.num_classes = splits.num_classes
        c, h, w = splits.image_shape
        if spec.kind == "lenet" and (c, h, w) != (1, 28, 28):
            raise DataError(f"{spec.display_name} takes 1x28x28 images, the data holds {c}x{h}x{w}")
        if training is None:
            training = {"lenet": DEFAULT_TRAINING, "torchvision": SCRATCH_TRAINING, "hf": FINETUNE_TRAINING}[
                spec.kind
            ]
        self.training = training
        self.training_note: str | None = None  # how the cached original was trained (report)
        self.eval_batch_size = eval_batch_size or (500 if spec.kind == "lenet" else 64)
        self.model_name = spec.display_name
        self.seq_len = c * h * w  # pixels per example, for the report header
        self.input_key = "pixel_values" if spec.kind == "hf" else "x"
        #: where the original came from, for the report (set by ``load_original``)
        self.origin = ""

    def train_plan(self) -> tuple[TrainConfig, str | None]:
        """The TrainConfig the original is trained with on this train split, and why it
        differs from ``training.train`` (None where it does not)."""
        if self.training.schedule is None:
            return self.training.train, None
        steps_per_epoch = -(-len(self.splits.train[1]) // self.training.batch_size)
        return self.training.schedule.plan(self.training.train, steps_per_epoch)

    # -- model --------------------------------------------------------------------------
    def cache_parts(self) -> dict[str, Any]:
        if self.spec.kind == "lenet":  # the key of the built-in LeNets as before
            arch: str = self.arch
        else:
            arch = f"{self.spec.kind}:{self.spec.name}:{self.spec.identity()}"
        # keyed by the schedule actually run, so a training that did not change keeps its cache
        training = {"train": config_key(self.train_plan()[0]), "batch_size": self.training.batch_size}
        return {
            "arch": arch,
            "data": self.splits.fingerprint(),
            "training": training,
            "code": _TRAIN_CODE_VERSION,
        }

    def _class_names(self) -> list[str] | None:
        names = self.splits.class_names
        return None if names is None else list(names)

    def _build(self) -> nn.Module:
        """A randomly initialised LeNet / torchvision model for the data's classes."""
        if self.spec.kind == "lenet":
            return ARCHS[self.arch](num_classes=self.num_classes, class_names=self._class_names())
        return TorchvisionClassifier(self.arch, self.num_classes, class_names=self._class_names())

    def _hf_head_fits(self) -> bool:
        assert self.spec.source is not None
        cfg = read_config(self.spec.source)
        archs = cfg.get("architectures") or []
        id2label = cfg.get("id2label") or {}
        return (
            any(str(a).endswith("ForImageClassification") for a in archs)
            and len(id2label) == self.num_classes
        )

    def load_original(self, *, progress: bool = True) -> nn.Module:
        kind = self.spec.kind
        if kind == "torchvision" and self.spec.path is not None:
            return self._load_weights().eval()
        if kind == "hf":
            from transformers import AutoModelForImageClassification

            assert self.spec.source is not None
            if self._hf_head_fits():
                self.origin = f"the head of {self.spec.source.name} as given ({self.num_classes} classes)"
                with reading(f"the image model at {self.spec.source.path}"):
                    return AutoModelForImageClassification.from_pretrained(
                        self.spec.source.path, **NO_HUB_KERNELS
                    ).eval()
            path = cached_dir(
                "image-classifiers", cache_key(self.cache_parts()), lambda d: self._train(d, progress)
            )
            self.origin = f"fine-tuned here with a new {self.num_classes}-class head (cached)"
            with reading(f"the trained original image classifier at {path}"):
                return AutoModelForImageClassification.from_pretrained(str(path), **NO_HUB_KERNELS).eval()
        path = cached_dir(
            "image-classifiers", cache_key(self.cache_parts()), lambda d: self._train(d, progress)
        )
        model = self._build()
        state = load_file(str(path / "model.safetensors"))
        self.training_note = read_training_note(path)
        if kind == "torchvision":
            model.net.load_state_dict(state)  # type: ignore[union-attr]
            self.origin = f"{self.arch}: random init, trained here on the train split (cached)"
        else:
            model.load_state_dict(state)
        return model.eval()

    def _load_weights(self) -> nn.Module:
        path = Path(str(self.spec.path))
        if not path.is_file():
            raise DataError(f"weights file not found: {path}")
        if path.suffix != ".safetensors":
            raise DataError(f"{path}: weights must be a .safetensors file (modelpress reads no pickle)")
        try:
            state = load_file(str(path))
        except (SafetensorError, OSError, ValueError) as e:
            raise DataError(f"cannot read the weights file {path}: {e}") from None
        model = self._build()
        assert isinstance(model, TorchvisionClassifier)
        # a state dict saved from the bare torchvision network, or from this wrapper
        if state and all(k.startswith("net.") for k in state):
            state = {k[4:]: v for k, v in state.items()}
        _fits(model.net, state, f"the weights file {path.name} for {self.arch}", self.num_classes)
        self.origin = f"{self.arch} with the weights of {path.name}, as given"
        return model

    def _train(self, out: Path, progress: bool) -> None:
        torch.manual_seed(self.training.train.seed)
        if self.spec.kind == "hf":
            from transformers import AutoModelForImageClassification

            assert self.spec.source is not None
            names = self._class_names() or [str(i) for i in range(self.num_classes)]
            with reading(f"the image model at {self.spec.source.path}"):
                model: nn.Module = AutoModelForImageClassification.from_pretrained(
                    self.spec.source.path,
                    num_labels=self.num_classes,
                    id2label=dict(enumerate(names)),
                    label2id={n: i for i, n in enumerate(names)},
                    ignore_mismatched_sizes=True,
                    **NO_HUB_KERNELS,
                )
        else:
            model = self._build()
        config, why = self.train_plan()
        t0 = time.perf_counter()
        result = fit(
            model,
            self.loss,
            lambda epoch: self.batches("train", self.training.batch_size, shuffle_seed=epoch),
            config,
            evaluate=lambda m: self.score(m, "validation"),
            progress=progress,
            desc=f"training the original {self.model_name} (one-time, cached)",
        )
        log.info("trained %s in %.0f s: %s", self.model_name, time.perf_counter() - t0, result.history)
        write_training_note(out, result, why, f"validation {self.metric}")
        if self.spec.kind == "hf":
            model.save_pretrained(str(out))  # type: ignore[operator]
            return
        state = model.net.state_dict() if isinstance(model, TorchvisionClassifier) else model.state_dict()
        save_file({k: v.contiguous() for k, v in state.items()}, str(out / "model.safetensors"))

    def image_input(self) -> ImageInput:
        """What the model takes, as this task's data was prepared: channels and size of its
        images, their mean / std, the class names (kept with each artifact, for serving)."""
        c, h, w = self.splits.image_shape
        prep = ImagePreprocess(channels=c, size=(h, w), mean=self.splits.mean, std=self.splits.std)
        return ImageInput(prep, self.splits.class_names, self.input_key)

    def artifact_extras(self) -> dict[str, Callable[[Path], object]]:
        return {PREPROCESSING_FILE: self.image_input().write}

    # -- data ---------------------------------------------------------------------------
    def _split(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        try:
            return getattr(self.splits, split)
        except AttributeError:
            raise ValueError(f"unknown split '{split}'") from None

    def batches(
        self, split: str, batch_size: int, *, shuffle_seed: int | None = None
    ) -> Iterator[dict[str, Any]]:
        x, y = self._split(split)
        order = torch.arange(len(y))
        if shuffle_seed is not None:
            order = torch.randperm(len(y), generator=torch.Generator().manual_seed(shuffle_seed))
        for i in range(0, len(y), batch_size):
            idx = order[i : i + batch_size]
            yield {self.input_key: self.splits.prepare(x[idx]), "labels": y[idx], "index": idx}

    def logits(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        out = model(**{self.input_key: x})
        return getattr(out, "logits", out)

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        dev = model_device(model)
        logits = self.logits(model, batch[self.input_key].to(dev)).float()
        labels = batch["labels"].to(dev)
        if logits.shape[-1] != self.num_classes:
            raise DataError(
                f"{self.model_name} has {logits.shape[-1]} outputs, the data has {self.num_classes} classes"
            )
        return F.cross_entropy(logits, labels)

    @torch.no_grad()
    def predict(
        self, model: nn.Module, split: str = "test", device: torch.device | str = "cpu"
    ) -> torch.Tensor:
        x, _ = self._split(split)
        dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
        n = len(x) if split != "test" or self.eval_limit is None else min(self.eval_limit, len(x))
        b = self.eval_batch_size
        return torch.cat(
            [
                self.logits(model, self.splits.prepare(x[i : i + b]).to(device, dtype)).argmax(-1).cpu()
                for i in range(0, n, b)
            ]
        )

    def score(self, model: nn.Module, split: str = "validation") -> float:
        _, y = self._split(split)
        preds = self.predict(model, split, model_device(model))
        return (preds == y[: len(preds)]).float().mean().item()

    def example_inputs(self, batch_size: int) -> dict[str, torch.Tensor]:
        x, _ = self.splits.test
        return {self.input_key: self.splits.prepare(x[torch.arange(batch_size) % len(x)])}

    def evaluate(
        self,
        model: nn.Module,
        *,
        reference: torch.Tensor | None = None,
        device: torch.device | str = "cpu",
        progress: bool = True,
    ) -> Evaluation:
        t0 = time.perf_counter()
        preds = self.predict(model, "test", device)
        correct = preds == self.splits.test[1][: len(preds)]
        acc = correct.float().mean().item()
        agree = None if reference is None else (preds == reference).float().mean().item()
        return Evaluation("accuracy", acc, preds, agree, time.perf_counter() - t0, correct=correct)

    def eval_size(self) -> int | None:
        return len(self.splits.test[1])

    def limit_evaluation(self, n: int) -> str | None:
        total = len(self.splits.test[1])
        if n >= total:
            return None
        self.eval_limit = n
        return f"the first {n} of {total} test images"

    def describe(self) -> dict[str, Any]:
        s = self.splits
        c, h, w = s.image_shape
        facts = {
            **super().describe(),
            "seq_len": f"1 image of {h}x{w}" + ("" if c == 1 else f"x{c}"),
            "data": f"{s.name} (train {len(s.train[1])}, validation {len(s.validation[1])}, "
            f"test {len(s.test[1])}, seed {s.seed}"
            + (f", {s.num_classes} classes" if s.class_names is not None else "")
            + (f"; {s.split_note}" if s.split_note else "")
            + ")"
            + (f"; original: {self.origin}" if self.origin else ""),
            **({"original_training": self.training_note} if self.training_note else {}),
        }
        return facts
