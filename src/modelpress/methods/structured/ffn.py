"""``prune-ffn``: remove feed-forward (intermediate) neurons for real.

A neuron is one row of the up projection (BERT ``intermediate.dense``; Llama ``gate_proj``
and ``up_proj``, with the bias) and the same column of the down projection (BERT
``output.dense``, Llama ``down_proj``): the dependency group of Torch-Pruning (Fang et al.
2023, arXiv 2301.12900). Importance as in ``common``: weight norm (Li et al. 2017, arXiv
1608.08710), activation magnitude, or first-order Taylor (Molchanov et al. 2019, arXiv
1906.10771).
"""

from __future__ import annotations

import dataclasses

from torch import nn

from ..base import CompressContext, between, param, register, register_config
from .common import StructuredConfig, run_pruning
from .groups import ffn_groups

__all__ = ["PruneFFNConfig"]


@register_config
@dataclasses.dataclass(frozen=True)
class PruneFFNConfig(StructuredConfig):
    """Remove ``fraction`` of the FFN intermediate neurons per layer (``scope='layer'``,
    the same width in every layer) or over all layers (``'global'``). See
    ``StructuredConfig`` for the other fields."""

    name = "prune-ffn"
    fraction: float = param(0.5, between(0, 1, hi_open=True))


@register(PruneFFNConfig)
def _prune_ffn(model: nn.Module, config: PruneFFNConfig, ctx: CompressContext) -> nn.Module:
    return run_pruning(model, config, ctx, ffn_groups)
