"""``prune-channels``: remove conv filters (and hidden Linear neurons) of CNNs / MLPs for real.

Filter pruning after Li et al. 2017, "Pruning Filters for Efficient ConvNets" (arXiv
1608.08710): a filter goes with its bias, its entries of a following BatchNorm, and the
input channels of the next conv — or, after a flatten, its ``H*W`` block of input columns of
the first Linear. The dependencies are found by tracing the model with ``torch.fx`` (a small
version of Torch-Pruning's dependency graph, Fang et al. 2023, arXiv 2301.12900): only
element-wise activations, pooling, dropout, BatchNorm and ``flatten(1)`` may sit between a
layer and its consumers. A layer that feeds the model's output is left as it is; a selected
layer whose output reaches anything else (a residual addition, a concatenation, a reshape)
is refused with an error naming the operation — exclude it to prune the rest.
"""

from __future__ import annotations

import dataclasses
import logging

from torch import nn

from ...errors import ConfigError
from ..base import CompressContext, matches, register, register_config
from .common import StructuredConfig, run_pruning
from .groups import Group, channel_groups

__all__ = ["PruneChannelsConfig", "prunable_channels"]

log = logging.getLogger(__name__)


@register_config
@dataclasses.dataclass(frozen=True)
class PruneChannelsConfig(StructuredConfig):
    """Remove ``fraction`` of the output channels of every selected Conv (and of the
    neurons of hidden Linear layers) with the dependent inputs of the next layer. See
    ``StructuredConfig`` for the other fields; include / exclude match the pruned layer."""

    name = "prune-channels"


def prunable_channels(model: nn.Module, config: PruneChannelsConfig | None = None) -> list[Group]:
    """The channel groups of ``model`` selected by ``config`` (all when None); raises for a
    selected layer whose dependencies modelpress cannot follow."""
    groups, skipped = channel_groups(model)
    include, exclude = (config.include, config.exclude) if config else (("*",), ())
    for name, reason in skipped.items():
        if not matches(name, include, exclude):
            continue
        if reason.endswith("the model's output"):
            log.info("prune-channels: '%s' is kept whole: %s", name, reason)
            continue
        raise ConfigError(
            f"prune-channels cannot prune '{name}': {reason}, which it does not follow (supported: "
            "conv/linear -> batchnorm, activation, pooling, dropout -> conv, or flatten(1) -> linear); "
            f"add '{name}' to exclude"
        )
    return groups


@register(PruneChannelsConfig)
def _prune_channels(model: nn.Module, config: PruneChannelsConfig, ctx: CompressContext) -> nn.Module:
    return run_pruning(model, config, ctx, lambda m: prunable_channels(m, config))
