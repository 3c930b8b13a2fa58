"""What methods that train share: switching gradients on for a while, and the short
fine-tune of a compressed model on its task through the one loop (``loop.fit``)."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable, Iterator

from torch import nn

from .loop import FitResult, TrainConfig, fit

__all__ = ["finetune_on_task", "grads_on"]

log = logging.getLogger(__name__)


@contextlib.contextmanager
def grads_on(params: Iterable[nn.Parameter], *, on: bool = True, clear: bool = False) -> Iterator[None]:
    """Set ``requires_grad`` of ``params`` to ``on`` inside the block and restore each
    parameter's own flag after it (``clear``: drop the gradients too)."""
    params = list(params)
    flags = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(on)
    try:
        yield
    finally:
        for p, f in zip(params, flags, strict=True):
            p.requires_grad_(f)
            if clear:
                p.grad = None


def finetune_on_task(
    model: nn.Module,
    data: object,
    train: TrainConfig,
    *,
    batch_size: int,
    seed: int = 0,
    params: Iterable[nn.Parameter] | None = None,
    progress: bool = True,
    desc: str = "fine-tuning",
) -> FitResult:
    """Train ``params`` (default: all of the model's) on ``data``'s train split with its
    loss, validating with its ``score`` each epoch (the best epoch kept, as ``fit`` does);
    ``data`` is a ``TaskData`` (batches, loss, score). Gradient flags are restored after."""
    params = list(model.parameters()) if params is None else list(params)
    with grads_on(params):
        result = fit(
            model,
            data.loss,  # type: ignore[attr-defined]
            lambda epoch: data.batches("train", batch_size, shuffle_seed=seed + epoch),  # type: ignore[attr-defined]
            train,
            params=params,
            # no score (a user's batches without eval_fn): the last epoch is kept
            evaluate=(lambda m: data.score(m, "validation")) if hasattr(data, "score") else None,
            higher_is_better=bool(getattr(data, "higher_is_better", True)),
            progress=progress,
            desc=desc,
        )
    log.info("%s: %d steps in %.0f s: %s", desc, result.steps, result.seconds, result.history)
    return result
