"""``prune-layers``: drop whole transformer blocks.

The blocks that change their input least are removed: Block Influence ``1 - cos(x_in,
x_out)`` averaged over calibration tokens (Men et al. 2024, "ShortGPT: Layers in Large
Language Models are More Redundant Than You Expect", arXiv 2403.03853), or the first-order
Taylor estimate ``(sum g*w)^2`` over the block's parameters (Molchanov et al. 2019, arXiv
1906.10771). The model keeps one contiguous list of blocks, their cache ``layer_idx`` is
renumbered and ``config.num_hidden_layers`` (and ``layer_types``) updated, so the saved
config alone rebuilds the shorter model.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import torch
from torch import nn

from ...models.blocks import block_list
from ...primitives.importance import block_influence, n_to_remove, select_keep
from ..base import (
    NON_NEGATIVE,
    POSITIVE,
    CompressContext,
    MethodConfig,
    between,
    one_of,
    param,
    register,
    register_config,
)
from .common import FIT_DATA, IMPORTANCES, backward_passes, calibration, finetune, forward_passes
from .groups import remove_blocks

__all__ = ["PruneLayersConfig", "block_scores"]

log = logging.getLogger(__name__)


@register_config
@dataclasses.dataclass(frozen=True)
class PruneLayersConfig(MethodConfig):
    """Remove ``fraction`` of the transformer blocks (rounded half up; at least one stays).

    importance: ``activation`` (Block Influence on ``calibration_batches`` train batches) or
    ``taylor``; both need ``data``. epochs / max_steps / lr / batch_size / seed: the
    fine-tune after pruning (epochs=0: none).
    """

    name = "prune-layers"
    fraction: float = param(0.25, between(0, 1, hi_open=True))
    importance: str = param("activation", one_of(*IMPORTANCES))
    calibration_batches: int = param(8, POSITIVE)
    batch_size: int = param(32, POSITIVE)
    epochs: int = param(0, NON_NEGATIVE)
    lr: float = param(5e-5, POSITIVE)
    max_steps: int | None = param(None, POSITIVE)
    seed: int = param(0, NON_NEGATIVE)

    def validate(self) -> None:
        if self.importance == "l2":
            raise self.error(
                "a block's weight norm says nothing about what it contributes; "
                "use importance 'activation' (Block Influence) or 'taylor'"
            )


def block_scores(model: nn.Module, config: PruneLayersConfig, ctx: CompressContext) -> torch.Tensor:
    """(n_blocks,) importance of each block on calibration batches; higher = keep."""
    _, blocks = block_list(model, config.name)
    data, batches = calibration(config, ctx)
    scores = torch.zeros(len(blocks), dtype=torch.float64)
    if config.importance == "activation":

        def hook(i: int):
            def fn(_m: nn.Module, args: tuple, kwargs: dict, out: Any) -> None:
                x_in = args[0] if args else kwargs["hidden_states"]
                x_out = out[0] if isinstance(out, (tuple, list)) else out
                scores[i] += block_influence(x_in, x_out)

            return fn

        handles = [b.register_forward_hook(hook(i), with_kwargs=True) for i, b in enumerate(blocks)]
        forward_passes(model, data, batches, handles)
        return scores
    params = [list(b.parameters()) for b in blocks]
    for _ in backward_passes(model, data, batches, [p for ps in params for p in ps]):  # taylor
        for i, ps in enumerate(params):
            s = sum(float((p.detach() * p.grad).double().sum()) for p in ps if p.grad is not None)
            scores[i] += s * s
    return scores


@register(PruneLayersConfig)
def _prune_layers(model: nn.Module, config: PruneLayersConfig, ctx: CompressContext) -> nn.Module:
    ctx.require_data(
        config.name, FIT_DATA if config.epochs else "data to score blocks", score=config.epochs > 0
    )
    _, blocks = block_list(model, config.name)
    n = len(blocks)
    n_remove = n_to_remove(config.fraction, n)
    if n_remove >= n:
        raise config.error(f"fraction {config.fraction} removes all {n} blocks; lower it")
    scores = block_scores(model, config, ctx)
    keep = select_keep(scores, n_remove)
    log.info("prune-layers: keeps blocks %s of %d (scores %s)", keep, n, [round(float(s), 4) for s in scores])
    remove_blocks(model, keep)
    finetune(model, config, ctx)
    return model
