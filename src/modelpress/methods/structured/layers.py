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

from ...errors import ConfigError
from ...primitives.importance import block_influence, n_to_remove, select_keep
from ..base import CompressContext, MethodConfig, register, register_config
from .common import _grads_on, calibration_batches, finetune, require_data, validate_common
from .groups import block_list, remove_blocks

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
    fraction: float = 0.25
    importance: str = "activation"
    calibration_batches: int = 8
    batch_size: int = 32
    epochs: int = 0
    lr: float = 5e-5
    max_steps: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        validate_common(self)
        if self.importance == "l2":
            raise ConfigError(
                "prune-layers: a block's weight norm says nothing about what it contributes; "
                "use importance 'activation' (Block Influence) or 'taylor'"
            )


def block_scores(model: nn.Module, config: PruneLayersConfig, data: Any) -> torch.Tensor:
    """(n_blocks,) importance of each block on calibration batches; higher = keep."""
    _, blocks = block_list(model)
    scores = torch.zeros(len(blocks), dtype=torch.float64)
    was_training = model.training
    model.eval()
    try:
        if config.importance == "activation":

            def hook(i: int):
                def fn(_m: nn.Module, args: tuple, kwargs: dict, out: Any) -> None:
                    x_in = args[0] if args else kwargs["hidden_states"]
                    x_out = out[0] if isinstance(out, (tuple, list)) else out
                    scores[i] += block_influence(x_in, x_out)

                return fn

            handles = [b.register_forward_hook(hook(i), with_kwargs=True) for i, b in enumerate(blocks)]
            try:
                with torch.no_grad():
                    for batch in calibration_batches(data, config):
                        data.loss(model, batch)
            finally:
                for h in handles:
                    h.remove()
        else:
            params = [list(b.parameters()) for b in blocks]
            with _grads_on([p for ps in params for p in ps]):
                for batch in calibration_batches(data, config):
                    model.zero_grad(set_to_none=True)
                    data.loss(model, batch).backward()
                    for i, ps in enumerate(params):
                        s = sum(float((p.detach() * p.grad).double().sum()) for p in ps if p.grad is not None)
                        scores[i] += s * s
                model.zero_grad(set_to_none=True)
    finally:
        model.train(was_training)
    return scores


@register(PruneLayersConfig)
def _prune_layers(model: nn.Module, config: PruneLayersConfig, ctx: CompressContext) -> nn.Module:
    data = require_data(ctx.data, config.name, "to score blocks")
    _, blocks = block_list(model)
    n = len(blocks)
    n_remove = n_to_remove(config.fraction, n)
    if n_remove >= n:
        raise ConfigError(f"prune-layers: fraction {config.fraction} removes all {n} blocks; lower it")
    scores = block_scores(model, config, data)
    keep = select_keep(scores, n_remove)
    log.info("prune-layers: keeps blocks %s of %d (scores %s)", keep, n, [round(float(s), 4) for s in scores])
    remove_blocks(model, keep)
    finetune(model, config, ctx, f"prune-layers {config.fraction:g} fine-tune")
    return model
