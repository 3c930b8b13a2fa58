"""Calibration data for post-training methods (GPTQ, AWQ, SmoothQuant, static INT8 ...).

``data`` is a task adapter (``models.tasks.TaskAdapter``): calibration batches come from its
*train* split (never the evaluation split), and a forward pass is the task loss under
``no_grad`` — so every task (classification, causal LM, images) calibrates the same way.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from ...errors import ConfigError

log = logging.getLogger(__name__)

__all__ = ["calibration_batches", "group_for", "input_hooks", "log_group_fallbacks", "run_forward"]


def group_for(cols: int, group_size: int | None) -> int | None:
    """The group size used for rows of ``cols`` weights: ``group_size`` if it divides them,
    else the largest divisor of ``cols`` below it (SmolLM2's rows of 576 take groups of 96
    for a requested 128), so a layer is never left unquantized for its width."""
    if group_size is None or cols % group_size == 0:
        return group_size
    return max(d for d in range(1, min(group_size, cols) + 1) if cols % d == 0)


def log_group_fallbacks(
    method: str, targets: Sequence[tuple[str, nn.Module]], group_size: int | None, strict: bool = False
) -> None:
    """Say, once per row width, which layers take a smaller group than asked (``group_for``);
    with ``strict`` (the configs' ``strict_groups``) such a layer is a ``ConfigError`` instead,
    raised before anything is quantized."""
    by_width: dict[int, list[str]] = {}
    for name, mod in targets:
        cols = int(mod.weight.shape[1])
        if group_for(cols, group_size) != group_size:
            by_width.setdefault(cols, []).append(name)
    for cols, names in sorted(by_width.items()):
        shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
        if strict:
            raise ConfigError(
                f"{method}: group_size {group_size} does not divide rows of {cols} weights "
                f"({shown}); choose a divisor of {cols}, group_size null (per channel), or "
                f"strict_groups false (groups of {group_for(cols, group_size)} there)"
            )
        log.warning(
            "%s: groups of %d (not %d, which does not divide rows of %d) for %s",
            method,
            group_for(cols, group_size),
            group_size,
            cols,
            shown,
        )


def calibration_batches(data: object, method: str, n_samples: int, batch_size: int) -> list[Any]:
    """The first ``n_samples`` (rounded up to whole batches) of a seeded shuffle of train."""
    for attr in ("batches", "loss"):
        if not hasattr(data, attr):
            raise ConfigError(f"{method}: needs calibration data (a task adapter as `data`)")
    n_batches = max(1, -(-n_samples // batch_size))
    batches = list(itertools.islice(data.batches("train", batch_size, shuffle_seed=0), n_batches))  # type: ignore[attr-defined]
    if not batches:
        raise ConfigError(f"{method}: the calibration set is empty")
    return batches


@torch.no_grad()
def run_forward(
    model: nn.Module,
    data: object,
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
            data.loss(model, b)  # type: ignore[attr-defined]
    finally:
        model.train(was_training)


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
