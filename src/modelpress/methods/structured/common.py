"""What the structured pruning methods share: config fields, scoring groups by importance
(weight norm, activations, Taylor), choosing what to keep, and the optional fine-tune
through the one training loop."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch import nn

from ...data.calibration import calibration_batches, run_forward
from ...primitives.importance import (
    activation_group_scores,
    l2_group_scores,
    n_to_remove,
    select_global,
    select_keep,
    taylor_group_contribution,
)
from ...training import TrainConfig, finetune_on_task, grads_on
from ..base import (
    NON_NEGATIVE,
    POSITIVE,
    CompressContext,
    MethodConfig,
    between,
    check_patterns,
    one_of,
    param,
)
from .groups import Group, check_untied, prune_group

__all__ = [
    "IMPORTANCES",
    "StructuredConfig",
    "backward_passes",
    "calibration",
    "finetune",
    "forward_passes",
    "plan_keep",
    "run_pruning",
    "score_groups",
]

log = logging.getLogger(__name__)

IMPORTANCES = ("l2", "activation", "taylor")
FIT_DATA = "data to fine-tune (or set epochs: 0)"


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

    fraction: float = param(0.25, between(0, 1, hi_open=True))
    importance: str = param("l2", one_of(*IMPORTANCES))
    scope: str = param("layer", one_of("layer", "global"))
    calibration_batches: int = param(8, POSITIVE)
    batch_size: int = param(32, POSITIVE)
    epochs: int = param(0, NON_NEGATIVE)
    lr: float = param(5e-5, POSITIVE)
    max_steps: int | None = param(None, POSITIVE)
    seed: int = param(0, NON_NEGATIVE)
    include: tuple[str, ...] = ("*",)
    exclude: tuple[str, ...] = ()


def calibration(cfg: Any, ctx: CompressContext) -> tuple[Any, list[Any]]:
    """The data and its first ``calibration_batches`` shuffled train batches."""
    data = ctx.require_data(cfg.name, f"data for importance '{cfg.importance}'")
    return data, calibration_batches(
        data, cfg.name, batch_size=cfg.batch_size, n_batches=cfg.calibration_batches, seed=cfg.seed
    )


def forward_passes(model: nn.Module, data: Any, batches: list[Any], handles: list[Any]) -> None:
    """One no-grad eval pass over ``batches`` feeding the forward hooks ``handles`` (removed after)."""
    try:
        run_forward(model, data, batches, progress=False)
    finally:
        for h in handles:
            h.remove()


def backward_passes(
    model: nn.Module, data: Any, batches: list[Any], params: list[nn.Parameter]
) -> Iterator[None]:
    """Yields after the loss of each batch is back-propagated into ``params`` (gradients on
    for them only here, cleared after); eval mode, so no dropout: scores are deterministic."""
    was_training = model.training
    model.eval()
    try:
        with grads_on(params, clear=True):
            for batch in batches:
                model.zero_grad(set_to_none=True)
                data.loss(model, batch).backward()
                yield
            model.zero_grad(set_to_none=True)
    finally:
        model.train(was_training)


def score_groups(
    model: nn.Module, groups: Sequence[Group], cfg: Any, ctx: CompressContext
) -> list[torch.Tensor]:
    """(n,) importance of every unit of every group; higher = keep."""
    if cfg.importance == "l2":
        return [l2_group_scores(g.tensors(), g.n) for g in groups]
    data, batches = calibration(cfg, ctx)
    scores = [torch.zeros(g.n, dtype=torch.float64) for g in groups]
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
        forward_passes(model, data, batches, handles)
        return scores
    params = list({id(p): p for g in groups for p in g.params()}.values())
    for _ in backward_passes(model, data, batches, params):  # taylor
        for i, g in enumerate(groups):
            scores[i] += taylor_group_contribution(g.grad_parts(), g.n)
    return scores


def plan_keep(model: nn.Module, groups: Sequence[Group], cfg: Any, ctx: CompressContext) -> list[list[int]]:
    """Which units of each group to keep (sorted indices)."""
    scores = score_groups(model, groups, cfg, ctx)
    if cfg.scope == "global":
        return select_global(scores, cfg.fraction, min_keep=1)
    keeps = []
    for g, s in zip(groups, scores, strict=True):
        n_remove = n_to_remove(cfg.fraction, g.n)
        if n_remove >= g.n:
            raise cfg.error(
                f"fraction {cfg.fraction} removes all {g.n} {g.unit}s of '{g.name}'; "
                "lower the fraction or exclude it"
            )
        keeps.append(select_keep(s, n_remove))
    return keeps


def finetune(model: nn.Module, cfg: Any, ctx: CompressContext) -> None:
    """The optional short fine-tune after pruning (all parameters, the one training loop)."""
    if cfg.epochs:
        finetune_on_task(
            model,
            ctx.require_data(cfg.name, FIT_DATA, score=True),
            TrainConfig(epochs=cfg.epochs, lr=cfg.lr, max_steps=cfg.max_steps, patience=None, seed=cfg.seed),
            batch_size=cfg.batch_size,
            seed=cfg.seed,
            progress=ctx.progress,
            desc=f"{cfg.name} {cfg.fraction:g} fine-tune",
        )


def _prune_each(groups: Sequence[Group], keeps: Sequence[Sequence[int]]) -> None:
    for g, keep in zip(groups, keeps, strict=True):
        prune_group(g, keep)


def run_pruning(
    model: nn.Module,
    cfg: StructuredConfig,
    ctx: CompressContext,
    find: Callable[[nn.Module], Sequence[Group]],
    prune: Callable[[Sequence[Any], Sequence[Sequence[int]]], None] = _prune_each,
) -> nn.Module:
    """Find the groups, check the data a fine-tune needs before touching the model, score,
    prune (``prune(groups, keeps)``, all at once), fine-tune. include / exclude select groups
    by their names, which are module names (the attention module, the layer or MLP, the
    producing conv / linear)."""
    if cfg.epochs:
        ctx.require_data(cfg.name, FIT_DATA, score=True)
    found = find(model)
    check_patterns(model, cfg.name, cfg.include, cfg.exclude)
    groups = [g for g in found if g.selected(cfg.include, cfg.exclude)]
    if not groups:
        raise cfg.error("no structure to prune (check include/exclude)")
    check_untied(model, groups, cfg.name)
    keeps = plan_keep(model, groups, cfg, ctx)
    before = sum(p.numel() for p in model.parameters())
    sizes = [g.n for g in groups]
    prune(groups, keeps)
    for g, n in zip(groups, sizes, strict=True):
        log.info("%s: '%s' keeps %d of %d %ss", cfg.name, g.name, g.n, n, g.unit)
    log.info("%s: parameters %d -> %d", cfg.name, before, sum(p.numel() for p in model.parameters()))
    finetune(model, cfg, ctx)
    return model
