"""What the structured pruning methods share: config fields and their validation, scoring
groups by importance (weight norm, activations, Taylor), choosing what to keep, and the
optional fine-tune through the one training loop."""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import logging
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch import nn

from ...errors import ConfigError
from ...primitives.importance import (
    activation_group_scores,
    l2_group_scores,
    n_to_remove,
    select_global,
    select_keep,
    taylor_group_contribution,
)
from ...training.loop import FitResult, TrainConfig, fit
from ..base import CompressContext, MethodConfig, matches
from .groups import Group, check_untied, prune_group

__all__ = [
    "IMPORTANCES",
    "StructuredConfig",
    "calibration_batches",
    "finetune",
    "plan_keep",
    "prune_groups",
    "require_data",
    "score_groups",
]

log = logging.getLogger(__name__)

IMPORTANCES = ("l2", "activation", "taylor")
SCOPES = ("layer", "global")


def _check_positive_int(method: str, field: str, v: object, *, allow_zero: bool = False) -> None:
    if not isinstance(v, int) or isinstance(v, bool) or v < (0 if allow_zero else 1):
        kind = "a non-negative" if allow_zero else "a positive"
        raise ConfigError(f"{method}: {field} must be {kind} integer, got {v!r}")


def validate_common(cfg: Any) -> None:
    """Checks shared by every structured config (fields it does not have are skipped)."""
    m = cfg.name
    f = cfg.fraction
    if not isinstance(f, (int, float)) or isinstance(f, bool) or not 0 <= f < 1:
        raise ConfigError(f"{m}: fraction must be in [0, 1) (the share of units to remove), got {f!r}")
    if cfg.importance not in IMPORTANCES:
        raise ConfigError(f"{m}: importance must be one of {', '.join(IMPORTANCES)}, got {cfg.importance!r}")
    if hasattr(cfg, "scope") and cfg.scope not in SCOPES:
        raise ConfigError(
            f"{m}: scope must be 'layer' (the same fraction in every layer) or 'global' (one ranking "
            f"over all layers), got {cfg.scope!r}"
        )
    for field in ("calibration_batches", "batch_size"):
        _check_positive_int(m, field, getattr(cfg, field))
    _check_positive_int(m, "epochs", cfg.epochs, allow_zero=True)
    if cfg.max_steps is not None:
        _check_positive_int(m, "max_steps", cfg.max_steps)
    if not isinstance(cfg.lr, (int, float)) or not cfg.lr > 0:
        raise ConfigError(f"{m}: lr must be > 0, got {cfg.lr!r}")
    for field in ("include", "exclude"):
        v = getattr(cfg, field, ())
        if not isinstance(v, tuple) or not all(isinstance(p, str) for p in v):
            raise ConfigError(f"{m}: {field} must be a list of module-name patterns, got {v!r}")


@dataclasses.dataclass(frozen=True)
class StructuredConfig(MethodConfig):
    """Fields shared by prune-heads, prune-ffn and prune-channels.

    fraction: share of the units (heads, neurons, channels) to remove, in [0, 1).
    importance: ``l2`` (weight norm of the whole dependency group, no data), ``activation``
    (mean activation magnitude on ``calibration_batches`` train batches) or ``taylor``
    (``(sum g*w)^2`` per group over those batches; Molchanov et al. 2019).
    scope: ``layer`` removes the same fraction in every layer (uniform shapes); ``global``
    ranks the units of all layers together (per-layer normalised; Michel et al. 2019).
    epochs / max_steps / lr / batch_size / seed: the fine-tune after pruning (epochs=0: none).
    include / exclude: patterns on the structure names (attention module, layer, producer).
    """

    fraction: float = 0.25
    importance: str = "l2"
    scope: str = "layer"
    calibration_batches: int = 8
    batch_size: int = 32
    epochs: int = 0
    lr: float = 5e-5
    max_steps: int | None = None
    seed: int = 0
    include: tuple[str, ...] = ("*",)
    exclude: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        validate_common(self)


def require_data(data: object, method: str, why: str) -> Any:
    for attr in ("batches", "loss", "score"):
        if not hasattr(data, attr):
            raise ConfigError(
                f"{method} needs data {why}: pass a task adapter (batches, loss, score) as `data`"
            )
    return data


def calibration_batches(data: Any, cfg: Any) -> Iterator[Any]:
    """The first ``calibration_batches`` shuffled train batches (never evaluation data)."""
    got = list(
        itertools.islice(
            data.batches("train", cfg.batch_size, shuffle_seed=cfg.seed), cfg.calibration_batches
        )
    )
    if not got:
        raise ConfigError(f"{cfg.name}: the task's train split gave no batches for calibration")
    return iter(got)


@contextlib.contextmanager
def _grads_on(params: Sequence[nn.Parameter]) -> Iterator[None]:
    flags = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(True)
    try:
        yield
    finally:
        for p, f in zip(params, flags, strict=True):
            p.requires_grad_(f)
            p.grad = None


def score_groups(
    model: nn.Module, groups: Sequence[Group], cfg: Any, ctx: CompressContext
) -> list[torch.Tensor]:
    """(n,) importance of every unit of every group; higher = keep."""
    if cfg.importance == "l2":
        return [l2_group_scores(g.tensors(), g.n) for g in groups]
    data = require_data(ctx.data, cfg.name, f"for importance '{cfg.importance}'")
    scores = [torch.zeros(g.n, dtype=torch.float64) for g in groups]
    was_training = model.training
    model.eval()  # no dropout: scores are deterministic
    try:
        if cfg.importance == "activation":
            handles = []
            for i, g in enumerate(groups):
                _, mod, where, dim = g.probe

                def hook(
                    _m: nn.Module, args: Any, out: Any, i: int = i, where: str = where, dim: int = dim
                ) -> None:
                    x = args[0] if where == "input" else out
                    scores[i].add_(activation_group_scores(x, dim, groups[i].n))

                handles.append(mod.register_forward_hook(hook))
            try:
                with torch.no_grad():
                    for batch in calibration_batches(data, cfg):
                        data.loss(model, batch)
            finally:
                for h in handles:
                    h.remove()
        else:  # taylor
            params = [t for g in groups for t, _ in g.tensors() if isinstance(t, nn.Parameter)]
            with _grads_on(params):
                for batch in calibration_batches(data, cfg):
                    model.zero_grad(set_to_none=True)
                    data.loss(model, batch).backward()
                    for i, g in enumerate(groups):
                        parts = [
                            (t, t.grad, d)
                            for t, d in g.tensors()
                            if isinstance(t, nn.Parameter) and t.grad is not None
                        ]
                        scores[i] += taylor_group_contribution(parts, g.n)
                model.zero_grad(set_to_none=True)
    finally:
        model.train(was_training)
    return scores


def plan_keep(model: nn.Module, groups: Sequence[Group], cfg: Any, ctx: CompressContext) -> list[list[int]]:
    """Which units of each group to keep (sorted indices)."""
    scores = score_groups(model, groups, cfg, ctx)
    if getattr(cfg, "scope", "layer") == "global":
        return select_global(scores, cfg.fraction, min_keep=1)
    keeps = []
    for g, s in zip(groups, scores, strict=True):
        n_remove = n_to_remove(cfg.fraction, g.n)
        if n_remove >= g.n:
            raise ConfigError(
                f"{cfg.name}: fraction {cfg.fraction} removes all {g.n} {g.unit}s of '{g.name}'; "
                "lower the fraction or exclude it"
            )
        keeps.append(select_keep(s, n_remove))
    return keeps


def prune_groups(groups: Sequence[Group], keeps: Sequence[Sequence[int]], method: str) -> int:
    """Apply the keep lists; returns how many units were removed."""
    removed = 0
    for g, keep in zip(groups, keeps, strict=True):
        before = g.n
        prune_group(g, keep)
        removed += before - g.n
        log.info("%s: '%s' keeps %d of %d %ss", method, g.name, g.n, before, g.unit)
    return removed


def select_groups(model: nn.Module, groups: Sequence[Group], cfg: Any) -> list[Group]:
    chosen = [g for g in groups if matches(g.name, cfg.include, cfg.exclude)]
    if not chosen:
        raise ConfigError(f"{cfg.name}: no structure to prune (check include/exclude)")
    check_untied(model, chosen, cfg.name)
    return chosen


def finetune(model: nn.Module, cfg: Any, ctx: CompressContext, desc: str) -> FitResult | None:
    """The optional short fine-tune after pruning (all parameters, the one training loop)."""
    if cfg.epochs == 0:
        return None
    data = require_data(ctx.data, cfg.name, "to fine-tune (or set epochs: 0)")
    flags = {p: p.requires_grad for p in model.parameters()}
    for p in model.parameters():
        p.requires_grad_(True)
    try:
        result = fit(
            model,
            data.loss,
            lambda epoch: data.batches("train", cfg.batch_size, shuffle_seed=cfg.seed + epoch),
            TrainConfig(epochs=cfg.epochs, lr=cfg.lr, max_steps=cfg.max_steps, patience=None, seed=cfg.seed),
            evaluate=lambda m: data.score(m, "validation"),
            higher_is_better=bool(getattr(data, "higher_is_better", True)),
            progress=ctx.progress,
            desc=desc,
        )
    finally:
        for p, f in flags.items():
            p.requires_grad_(f)
    log.info("%s: fine-tuned %d steps in %.0f s: %s", cfg.name, result.steps, result.seconds, result.history)
    return result


def run_pruning(
    model: nn.Module,
    cfg: Any,
    ctx: CompressContext,
    find: Callable[[nn.Module], list[Group]],
    desc: str,
) -> nn.Module:
    """Find the groups, check the data a fine-tune needs before touching the model, score,
    prune, fine-tune."""
    if cfg.epochs:
        require_data(ctx.data, cfg.name, "to fine-tune (or set epochs: 0)")
    groups = select_groups(model, find(model), cfg)
    keeps = plan_keep(model, groups, cfg, ctx)
    before = sum(p.numel() for p in model.parameters())
    removed = prune_groups(groups, keeps, cfg.name)
    after = sum(p.numel() for p in model.parameters())
    log.info("%s: removed %d units, parameters %d -> %d", cfg.name, removed, before, after)
    finetune(model, cfg, ctx, desc)
    return model
