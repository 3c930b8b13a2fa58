"""The one fine-tuning loop of modelpress.

Every method that trains (the default model's head, QAT, centroid tuning, gradual pruning,
distillation) goes through ``fit``: AdamW with linear warm-up and decay, gradient clipping,
a progress bar, evaluation after each epoch, early stopping on the validation metric with
the best weights restored, a fixed seed, and an ``after_step`` hook (e.g. to re-apply
pruning masks).
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import random
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from ..errors import ConfigError

__all__ = ["FitResult", "TrainConfig", "fit", "seed_everything"]

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    epochs: int = 1
    lr: float = 5e-5
    weight_decay: float = 0.01
    warmup_ratio: float = 0.06
    grad_clip: float | None = 1.0
    max_steps: int | None = None  # stop after this many optimizer steps (over all epochs)
    patience: int | None = 1  # epochs without improvement before stopping; None = never
    seed: int = 0

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ConfigError(f"epochs must be >= 1, got {self.epochs}")
        if not self.lr > 0:
            raise ConfigError(f"lr must be > 0, got {self.lr}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ConfigError(f"max_steps must be >= 1, got {self.max_steps}")


@dataclasses.dataclass
class FitResult:
    steps: int
    seconds: float
    history: list[dict[str, float]]  # one entry per epoch: loss, metric
    best_metric: float | None
    best_epoch: int | None


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


def fit(
    model: nn.Module,
    loss_fn: Callable[[nn.Module, Any], torch.Tensor],
    batches: Callable[[int], Iterable[Any]],
    config: TrainConfig,
    *,
    evaluate: Callable[[nn.Module], float] | None = None,
    higher_is_better: bool = True,
    params: Sequence[nn.Parameter] | None = None,
    steps_per_epoch: int | None = None,
    after_step: Callable[[nn.Module, int], None] | None = None,
    progress: bool = True,
    desc: str = "fine-tune",
) -> FitResult:
    """Train ``model`` in place.

    ``batches(epoch)`` yields the epoch's batches (shuffled by the caller with the epoch as
    seed, so runs are reproducible); ``loss_fn(model, batch)`` returns a scalar loss;
    ``evaluate(model)`` returns the validation metric used for early stopping. Only
    ``params`` are trained (default: all with ``requires_grad``).
    """
    seed_everything(config.seed)
    trainable = [p for p in (params if params is not None else model.parameters()) if p.requires_grad]
    if not trainable:
        raise ConfigError("nothing to train: no parameter requires grad")
    decay = [p for p in trainable if p.dim() >= 2]
    no_decay = [p for p in trainable if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=config.lr,
    )
    if steps_per_epoch is None:
        steps_per_epoch = sum(1 for _ in batches(0))
    total = steps_per_epoch * config.epochs
    if config.max_steps is not None:
        total = min(total, config.max_steps)
    warmup = int(total * config.warmup_ratio)

    def lr_lambda(step: int) -> float:
        if step < warmup:
            return (step + 1) / max(1, warmup)
        return max(0.0, (total - step) / max(1, total - warmup))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda)
    history: list[dict[str, float]] = []
    best: tuple[float, int, dict[str, torch.Tensor]] | None = None
    bad_epochs = 0
    step = 0
    start = time.perf_counter()
    bar = tqdm(total=total, desc=desc, disable=not progress, unit="step", leave=False)
    try:
        for epoch in range(config.epochs):
            model.train()
            running, count = 0.0, 0
            for batch in batches(epoch):
                if step >= total:
                    break
                loss = loss_fn(model, batch)
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"{desc}: loss became {loss.item()} at step {step}")
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if config.grad_clip:
                    torch.nn.utils.clip_grad_norm_(trainable, config.grad_clip)
                opt.step()
                sched.step()
                step += 1
                if after_step is not None:
                    after_step(model, step)
                running += loss.item()
                count += 1
                bar.update(1)
                bar.set_postfix(loss=f"{running / count:.4f}", epoch=epoch + 1)
            entry = {"epoch": epoch + 1, "loss": running / max(1, count)}
            model.eval()
            if evaluate is not None:
                metric = float(evaluate(model))
                entry["metric"] = metric
                better = best is None or (metric > best[0] if higher_is_better else metric < best[0])
                if better:
                    best = (metric, epoch + 1, copy.deepcopy(model.state_dict()))
                    bad_epochs = 0
                else:
                    bad_epochs += 1
                log.info("%s epoch %d: loss %.4f, metric %.4f", desc, epoch + 1, entry["loss"], metric)
            history.append(entry)
            if step >= total:
                break
            if config.patience is not None and bad_epochs > config.patience:
                log.info("%s: early stop after epoch %d", desc, epoch + 1)
                break
    finally:
        bar.close()
    if best is not None and best[1] != len(history):
        model.load_state_dict(best[2])
    model.eval()
    return FitResult(
        steps=step,
        seconds=time.perf_counter() - start,
        history=history,
        best_metric=None if best is None else best[0],
        best_epoch=None if best is None else best[1],
    )
