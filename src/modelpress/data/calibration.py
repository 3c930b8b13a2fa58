"""Calibration and training data as methods see it, and the passes they make over it.

``data`` handed to ``compress`` is anything with ``batches(split, batch_size, *,
shuffle_seed)`` and ``loss(model, batch)`` (``CalibrationData``; every task adapter is one),
plus ``score(model, split)`` for methods that early-stop or keep a quality tolerance
(``TaskData``). Calibration batches come from the *train* split, never the evaluation split,
and a calibration forward pass is the task loss under ``no_grad`` — so every task
(classification, causal LM, images) calibrates the same way — or, for a user's own data
(``data.user.UserData``), its forward alone.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn
from tqdm.auto import tqdm

from ..errors import ConfigError

__all__ = ["CalibrationData", "TaskData", "calibration_batches", "forward_pass", "input_hooks", "run_forward"]


@runtime_checkable
class CalibrationData(Protocol):
    """Model-ready batches of a split and a training loss."""

    def batches(self, split: str, batch_size: int, *, shuffle_seed: int | None = None) -> Iterable[Any]: ...

    def loss(self, model: nn.Module, batch: Any) -> torch.Tensor: ...


@runtime_checkable
class TaskData(CalibrationData, Protocol):
    """Calibration data that can also score a model (early stopping, quality tolerances)."""

    def score(self, model: nn.Module, split: str = "validation") -> float: ...


def calibration_batches(
    data: CalibrationData,
    method: str,
    *,
    batch_size: int,
    n_samples: int | None = None,
    n_batches: int | None = None,
    seed: int = 0,
) -> list[Any]:
    """The first ``n_batches`` batches (or enough for ``n_samples`` examples, rounded up to
    whole batches) of a seeded shuffle of the train split; an empty set is a ``ConfigError``."""
    if n_batches is None:
        n_batches = max(1, -(-int(n_samples or 1) // batch_size))
    batches = list(itertools.islice(data.batches("train", batch_size, shuffle_seed=seed), n_batches))
    if not batches:
        raise ConfigError(f"{method}: the task's train split gave no batches for calibration")
    return batches


@torch.no_grad()
def run_forward(
    model: nn.Module,
    data: CalibrationData,
    batches: Sequence[Any],
    *,
    desc: str = "calibrating",
    progress: bool = True,
) -> None:
    """One no-grad forward pass of the model over the batches (the task loss is discarded)."""
    was_training = model.training
    model.eval()
    try:
        for b in tqdm(batches, desc=desc, disable=not progress, leave=False):
            forward_pass(data, model, b)
    finally:
        model.train(was_training)


def forward_pass(data: CalibrationData, model: nn.Module, batch: Any) -> None:
    """One forward of ``model`` on ``batch`` for calibration: the data's own
    ``calibration_forward`` where it has one (a user's data: no loss needed to observe
    activations), else its task loss (discarded)."""
    forward = getattr(data, "calibration_forward", None)
    if callable(forward):
        forward(model, batch)
    else:
        data.loss(model, batch)


@contextmanager
def input_hooks(modules: dict[str, nn.Module], fn: Callable[[str, torch.Tensor], None]) -> Iterator[None]:
    """Call ``fn(name, x)`` with the input of each module (2-D: ``(tokens, features)``)."""

    def hook(name: str) -> Callable[..., None]:
        def run(_mod: nn.Module, args: tuple[Any, ...]) -> None:
            x = args[0]
            fn(name, x.detach().reshape(-1, x.shape[-1]))

        return run

    handles = [m.register_forward_pre_hook(hook(n)) for n, m in modules.items()]
    try:
        yield
    finally:
        for h in handles:
            h.remove()
