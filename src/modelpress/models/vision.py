"""Image classification on MNIST-5k with the LeNets of Deep Compression (``lenet.py``).

The original is trained on the train split (AdamW, the best validation epoch kept) and
cached.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from ..data.images import ImageSplits
from ..errors import ConfigError
from ..training.loop import DataSizedSchedule, TrainConfig, config_key, fit
from .cache import cache_key, cached_dir, read_training_note, write_training_note
from .lenet import LeNet5, LeNet300100
from .tasks import TASKS, Evaluation, TaskAdapter, model_device

__all__ = ["ImageClassificationTask", "LeNet5", "LeNet300100"]

_TRAIN_CODE_VERSION = 1


ARCHS = {"lenet-300-100": LeNet300100, "lenet-5": LeNet5}


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


@TASKS.register("image-classification")
class ImageClassificationTask(TaskAdapter):
    task = "image-classification"
    metric = "accuracy"
    higher_is_better = True

    def __init__(self, arch: str, splits: ImageSplits, *, training: ImageTraining | None = None) -> None:
        if arch not in ARCHS:
            raise ConfigError(f"unknown image architecture '{arch}' (known: {', '.join(ARCHS)})")
        self.arch = arch
        self.splits = splits
        self.training = training or DEFAULT_TRAINING
        self.training_note: str | None = None  # how the cached original was trained (report)
        self.model_name = {"lenet-300-100": "LeNet-300-100", "lenet-5": "LeNet-5"}[arch]
        self.seq_len = 784  # pixels per example, for the report header

    def train_plan(self) -> tuple[TrainConfig, str | None]:
        """The TrainConfig the original is trained with on this train split, and why it
        differs from ``training.train`` (None where it does not)."""
        if self.training.schedule is None:
            return self.training.train, None
        steps_per_epoch = -(-len(self.splits.train[1]) // self.training.batch_size)
        return self.training.schedule.plan(self.training.train, steps_per_epoch)

    def cache_parts(self) -> dict[str, Any]:
        # keyed by the schedule actually run, so a training that did not change keeps its cache
        training = {"train": config_key(self.train_plan()[0]), "batch_size": self.training.batch_size}
        return {
            "arch": self.arch,
            "data": self.splits.fingerprint(),
            "training": training,
            "code": _TRAIN_CODE_VERSION,
        }

    def load_original(self, *, progress: bool = True) -> nn.Module:
        path = cached_dir(
            "image-classifiers", cache_key(self.cache_parts()), lambda d: self._train(d, progress)
        )
        model = ARCHS[self.arch]()
        model.load_state_dict(load_file(str(path / "model.safetensors")))
        self.training_note = read_training_note(path)
        return model.eval()

    def _train(self, out: Path, progress: bool) -> None:
        torch.manual_seed(self.training.train.seed)
        model = ARCHS[self.arch]()
        config, why = self.train_plan()
        result = fit(
            model,
            self.loss,
            lambda epoch: self.batches("train", self.training.batch_size, shuffle_seed=epoch),
            config,
            evaluate=lambda m: self.score(m, "validation"),
            progress=progress,
            desc=f"training the original {self.model_name} (one-time, cached)",
        )
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(out / "model.safetensors"))
        write_training_note(out, result, why, f"validation {self.metric}")

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
            yield {"x": x[idx], "labels": y[idx], "index": idx}

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        dev = model_device(model)
        return F.cross_entropy(model(batch["x"].to(dev)).float(), batch["labels"].to(dev))

    @torch.no_grad()
    def predict(
        self, model: nn.Module, split: str = "test", device: torch.device | str = "cpu"
    ) -> torch.Tensor:
        x, _ = self._split(split)
        dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
        return torch.cat(
            [model(x[i : i + 500].to(device, dtype)).argmax(-1).cpu() for i in range(0, len(x), 500)]
        )

    def score(self, model: nn.Module, split: str = "validation") -> float:
        _, y = self._split(split)
        return (self.predict(model, split, model_device(model)) == y).float().mean().item()

    def example_inputs(self, batch_size: int) -> dict[str, torch.Tensor]:
        x, _ = self.splits.test
        return {"x": x[torch.arange(batch_size) % len(x)]}

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
        correct = preds == self.splits.test[1]
        acc = correct.float().mean().item()
        agree = None if reference is None else (preds == reference).float().mean().item()
        return Evaluation("accuracy", acc, preds, agree, time.perf_counter() - t0, correct=correct)

    def describe(self) -> dict[str, Any]:
        s = self.splits
        return {
            **super().describe(),
            "seq_len": "1 image of 28x28",
            "data": f"{s.name} (train {len(s.train[1])}, validation {len(s.validation[1])}, "
            f"test {len(s.test[1])}, seed {s.seed})",
            **({"original_training": self.training_note} if self.training_note else {}),
        }
