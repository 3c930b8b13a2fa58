"""Text classification: accuracy, and top-1 agreement with the original's predictions.

The default is all-MiniLM-L6-v2 with a classification head fine-tuned on the Rotten
Tomatoes snippets (fresh vs rotten). Why fine-tune the whole model rather than train a head
on frozen sentence embeddings: see docs/default-model.md (measured there).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ..data.datasets import TextSplits
from ..errors import ConfigError, DataError
from ..training.loop import DataSizedSchedule, TrainConfig, config_key, fit
from .cache import cache_key, cached_dir, read_training_note, write_training_note
from .sources import NO_HUB_KERNELS, ModelSource, read_config, reading
from .tasks import TASKS, Evaluation, TaskAdapter, check_count, model_device
from .text import bucketed_batches, check_chat_templates, to_device

__all__ = ["TextClassificationTask"]

log = logging.getLogger(__name__)

# Bump when the way the original is trained changes, so caches retrain.
_TRAIN_CODE_VERSION = 1


@dataclasses.dataclass(frozen=True)
class ClassifierTraining:
    """How the original classifier is trained on the train split."""

    train: TrainConfig = dataclasses.field(
        default_factory=lambda: TrainConfig(epochs=1, lr=5e-5, patience=None)
    )
    batch_size: int = 32
    max_length: int = 128
    #: how ``train`` adapts to the size of the train split (None: it runs as configured)
    schedule: DataSizedSchedule | None = None


# The original of a default or user-data bench: one epoch where that is at least 256 steps
# (Rotten Tomatoes: 299, unchanged since the first release), else trained until validation
# stops improving (at least 128 steps); at most 3000 steps on large data.
DEFAULT_TRAINING = ClassifierTraining(schedule=DataSizedSchedule(target_steps=256, max_steps=3000))


@TASKS.register("text-classification")
class TextClassificationTask(TaskAdapter):
    task = "text-classification"
    metric = "accuracy"
    higher_is_better = True

    def __init__(
        self,
        source: ModelSource,
        splits: TextSplits,
        *,
        training: ClassifierTraining | None = None,
        seq_len: int = 64,
        eval_batch_size: int = 64,
    ) -> None:
        if splits.train.labels is None or splits.train.label_names is None:
            raise DataError("text classification needs labelled data")
        check_count(seq_len, "--seq-len")
        check_count(eval_batch_size, "the evaluation batch size")
        max_positions = read_config(source).get("max_position_embeddings")
        if isinstance(max_positions, int) and not isinstance(max_positions, bool) and seq_len > max_positions:
            raise ConfigError(
                f"--seq-len {seq_len} is more than {source.name} takes (max_position_embeddings "
                f"{max_positions})"
            )
        self.source = source
        self.splits = splits
        self.training = training or DEFAULT_TRAINING
        self.training_note: str | None = None  # how the cached original was trained (report)
        self.seq_len = seq_len
        self.eval_batch_size = eval_batch_size
        self.num_labels = len(splits.train.label_names)
        self.model_name = source.name
        self._tokenizer: Any = None

    # -- model --------------------------------------------------------------------------
    @property
    def tokenizer(self):
        if self._tokenizer is None:
            from transformers import AutoTokenizer

            with reading(f"the tokenizer of {self.source.path}"):
                self._tokenizer = AutoTokenizer.from_pretrained(self.source.path)
        return self._tokenizer

    def _has_trained_head(self) -> bool:
        cfg = read_config(self.source)
        archs = cfg.get("architectures") or []
        return (
            any(a.endswith("ForSequenceClassification") for a in archs)
            and len(cfg.get("id2label", {}) or {}) == self.num_labels
        )

    def train_plan(self) -> tuple[TrainConfig, str | None]:
        """The TrainConfig the original is trained with on this train split, and why it
        differs from ``training.train`` (None where it does not)."""
        cfg = self.training.train
        if self.training.schedule is None:
            return cfg, None
        steps_per_epoch = -(-len(self.splits.train) // self.training.batch_size)  # bucketed_batches' count
        return self.training.schedule.plan(cfg, steps_per_epoch)

    def cache_parts(self) -> dict[str, Any]:
        # keyed by the schedule actually run, so a training that did not change keeps its cache
        training = {
            "train": config_key(self.train_plan()[0]),
            "batch_size": self.training.batch_size,
            "max_length": self.training.max_length,
        }
        return {
            "model": self.source.identity,
            "data": self.splits.fingerprint(),
            "labels": self.splits.train.label_names,
            "training": training,
            "code": _TRAIN_CODE_VERSION,
        }

    def load_original(self, *, progress: bool = True) -> nn.Module:
        from transformers import AutoModelForSequenceClassification

        if self._has_trained_head():
            log.info(
                "%s already has a %d-label head; using it as the original", self.source.path, self.num_labels
            )
            with reading(f"the model at {self.source.path}"):
                return AutoModelForSequenceClassification.from_pretrained(
                    self.source.path, **NO_HUB_KERNELS
                ).eval()
        key = cache_key(self.cache_parts())
        path = cached_dir("classifiers", key, lambda tmp: self._train_original(tmp, progress=progress))
        from transformers import AutoTokenizer

        with reading(f"the trained original classifier at {path}"):
            model = AutoModelForSequenceClassification.from_pretrained(str(path), **NO_HUB_KERNELS).eval()
            self._tokenizer = AutoTokenizer.from_pretrained(str(path))
        self.training_note = read_training_note(path)
        return model

    def _train_original(self, out: Path, *, progress: bool) -> None:
        from transformers import AutoModelForSequenceClassification

        names = self.splits.train.label_names or ()
        torch.manual_seed(self.training.train.seed)
        with reading(f"the model at {self.source.path}"):
            model = AutoModelForSequenceClassification.from_pretrained(
                self.source.path,
                num_labels=self.num_labels,
                id2label=dict(enumerate(names)),
                label2id={n: i for i, n in enumerate(names)},
                **NO_HUB_KERNELS,
            )
        check_chat_templates(self.tokenizer, f"the tokenizer of {self.source.path}")  # saved after training
        log.info(
            "training the original %s classifier on %d examples", self.source.name, len(self.splits.train)
        )
        t0 = time.perf_counter()
        config, why = self.train_plan()
        result = fit(
            model,
            self.loss,
            lambda epoch: self.batches("train", self.training.batch_size, shuffle_seed=epoch),
            config,
            evaluate=lambda m: self.score(m, "validation"),
            progress=progress,
            desc=f"training the original {self.source.name} classifier (one-time, cached)",
        )
        log.info("trained in %.0f s: %s", time.perf_counter() - t0, result.history)
        model.save_pretrained(str(out))
        self.tokenizer.save_pretrained(str(out))
        write_training_note(out, result, why, f"validation {self.metric}")

    # -- data ---------------------------------------------------------------------------
    def _split(self, split: str):
        try:
            return getattr(self.splits, split)
        except AttributeError:
            raise ValueError(f"unknown split '{split}'") from None

    def batches(
        self, split: str, batch_size: int, *, shuffle_seed: int | None = None
    ) -> Iterator[dict[str, torch.Tensor]]:
        data = self._split(split)
        return bucketed_batches(
            self.tokenizer,
            data.texts,
            data.labels,
            batch_size,
            max_length=self.training.max_length,
            shuffle_seed=shuffle_seed,
        )

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        device = model_device(model)
        b = to_device(batch, device)
        logits = model(**{k: v for k, v in b.items() if k not in ("labels", "index")}).logits
        return F.cross_entropy(logits.float(), b["labels"])

    def example_inputs(self, batch_size: int) -> dict[str, torch.Tensor]:
        texts = self.splits.test.texts
        rows = [texts[i % len(texts)] for i in range(batch_size)]
        enc = self.tokenizer(
            rows, padding="max_length", truncation=True, max_length=self.seq_len, return_tensors="pt"
        )
        return {k: v for k, v in enc.items() if k in ("input_ids", "attention_mask", "token_type_ids")}

    # -- evaluation ---------------------------------------------------------------------
    @torch.no_grad()
    def predict(
        self,
        model: nn.Module,
        split: str = "test",
        *,
        device="cpu",
        progress: bool = False,
        limit: int | None = None,
    ) -> torch.Tensor:
        """Predicted class ids of a split's examples (the first ``limit`` of them, if given)."""
        data = self._split(split)
        n = len(data) if limit is None else min(limit, len(data))
        preds = torch.empty(n, dtype=torch.long)
        n_batches = -(-n // self.eval_batch_size)
        batches = bucketed_batches(
            self.tokenizer,
            data.texts[:n],
            None if data.labels is None else data.labels[:n],
            self.eval_batch_size,
            max_length=self.training.max_length,
        )
        for batch in tqdm(
            batches,
            total=n_batches,
            desc="evaluating",
            disable=not progress,
            leave=False,
        ):
            inputs = {k: v.to(device) for k, v in batch.items() if k not in ("labels", "index")}
            preds[batch["index"]] = model(**inputs).logits.argmax(-1).cpu()
        return preds

    def score(self, model: nn.Module, split: str = "validation", *, progress: bool = False) -> float:
        device = model_device(model)
        labels = torch.tensor(self._split(split).labels)
        return (self.predict(model, split, device=device, progress=progress) == labels).float().mean().item()

    def evaluate(
        self,
        model: nn.Module,
        *,
        reference: torch.Tensor | None = None,
        device: torch.device | str = "cpu",
        progress: bool = True,
    ) -> Evaluation:
        t0 = time.perf_counter()
        preds = self.predict(model, "test", device=device, progress=progress, limit=self.eval_limit)
        labels = torch.tensor(list(self.splits.test.labels or [])[: len(preds)])
        correct = preds == labels
        acc = correct.float().mean().item()
        agree = None if reference is None else (preds == reference).float().mean().item()
        return Evaluation("accuracy", acc, preds, agree, time.perf_counter() - t0, correct=correct)

    def eval_size(self) -> int | None:
        return len(self.splits.test)

    def limit_evaluation(self, n: int) -> str | None:
        total = len(self.splits.test)
        if n >= total:
            return None
        self.eval_limit = n
        return f"the first {n} of {total} test examples"

    def describe(self) -> dict[str, Any]:
        s = self.splits
        return {
            **super().describe(),
            "data": f"{s.name} (train {len(s.train)}, validation {len(s.validation)}, "
            f"test {len(s.test)}, seed {s.seed})",
            **({"original_training": self.training_note} if self.training_note else {}),
        }
