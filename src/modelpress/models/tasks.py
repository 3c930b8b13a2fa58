"""Task adapters: what a model is evaluated on, and how.

An adapter knows its model source and data, builds (and caches) the original model, makes
example inputs for timing, evaluates a model (task metric + agreement with the original's
predictions), and provides training batches and a loss for methods that fine-tune.
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError
from ..registry import Registry

__all__ = ["TASKS", "Evaluation", "TaskAdapter", "check_count", "model_device"]


def check_count(value: Any, what: str, minimum: int = 1) -> int:
    """``value`` as a count of at least ``minimum`` (a token count, a batch size ...), or one
    ``ConfigError`` naming ``what``: zero, negative and non-integer values are refused."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{what} must be an integer >= {minimum}, got {value!r}")
    return value


def model_device(model: nn.Module) -> torch.device:
    """Device of a model's first parameter or buffer (compressed models may hold buffers only)."""
    for p in model.parameters():
        return p.device
    for b in model.buffers():
        return b.device
    return torch.device("cpu")


@dataclasses.dataclass
class Evaluation:
    metric: str
    value: float
    predictions: torch.Tensor  # task-specific: class ids, or next-token ids
    agreement: float | None = None  # share of predictions equal to the reference's
    seconds: float = 0.0
    # Per-example outcomes, so that paired tests (bench/stats.py) compare the same examples:
    # classification: (examples,) bool, whether each test example was classified correctly;
    # causal LM: (sequences,) float64 summed NLL of each test sequence and (sequences,) int64
    # tokens scored in it. None where a task keeps none.
    correct: torch.Tensor | None = None
    nll: torch.Tensor | None = None
    tokens: torch.Tensor | None = None


class TaskAdapter(abc.ABC):
    task: str = ""
    metric: str = ""
    higher_is_better: bool = True

    #: display name of the model in tables
    model_name: str = ""

    @abc.abstractmethod
    def load_original(self, *, progress: bool = True) -> nn.Module:
        """The original (uncompressed, fp32) model, built or read from the cache."""

    @abc.abstractmethod
    def example_inputs(self, batch_size: int) -> dict[str, torch.Tensor]:
        """Fixed real inputs of ``batch_size`` rows and ``self.seq_len`` tokens, for timing."""

    @abc.abstractmethod
    def evaluate(
        self,
        model: nn.Module,
        *,
        reference: torch.Tensor | None = None,
        device: torch.device | str = "cpu",
        progress: bool = True,
    ) -> Evaluation:
        """Task metric on the test data; agreement with ``reference`` predictions if given."""

    @abc.abstractmethod
    def batches(self, split: str, batch_size: int, *, shuffle_seed: int | None = None) -> Iterable[Any]:
        """Model-ready batches of a data split ("train", "validation", "test")."""

    @abc.abstractmethod
    def loss(self, model: nn.Module, batch: Any) -> torch.Tensor:
        """The training loss of ``model`` on one batch."""

    @abc.abstractmethod
    def score(self, model: nn.Module, split: str = "validation") -> float:
        """The task metric of ``model`` on a split (for early stopping during fine-tuning)."""

    seq_len: int = 64
    #: a causal LM: the bench also times greedy generation (decode tokens/s, time to first
    #: token) with ``example_inputs`` as the prompt
    generates: bool = False
    #: evaluate on the first this many test examples only (``limit_evaluation``)
    eval_limit: int | None = None

    def eval_size(self) -> int | None:
        """Test examples ``evaluate`` uses in all; None where the task does not count examples."""
        return None

    def limit_evaluation(self, n: int) -> str | None:
        """Evaluate on the first ``n`` test examples from now on (the same ones for every
        model); returns what that means for the report, None where this task cannot."""
        return None

    #: a fresh process can load this task's artifacts by path (``load(path)``), which the
    #: bench's memory measurement does; False for a user's own module
    fresh_process: bool = True

    def compress_kwargs(self) -> dict[str, Any]:
        """What the bench passes to ``compress`` besides the model and recipe: the data its
        methods use (the adapter itself; a user's task hands over the user's batches and
        teacher)."""
        return {"data": self}

    def artifact_extras(self) -> dict[str, Callable[[Path], object]]:
        """What is saved with each artifact besides its weights and manifest, so that it can
        be served or exported as it is (``save``'s ``extras``): the tokenizer of a text
        model; an image model's preprocessing (``ImageClassificationTask``)."""
        tok = getattr(self, "tokenizer", None)
        return {} if tok is None else {"tokenizer": lambda d: tok.save_pretrained(str(d))}

    def load_artifact(self, path: Any) -> nn.Module:
        """A saved row back in memory (``modelpress.load``; a user's task loads into a fresh
        instance of the user's module)."""
        from ..api import load

        return load(path)

    def describe(self) -> dict[str, Any]:
        """Facts for the report header (task, data, sizes)."""
        return {"task": self.task, "metric": self.metric, "model": self.model_name, "seq_len": self.seq_len}


TASKS: Registry[type[TaskAdapter]] = Registry("task")
