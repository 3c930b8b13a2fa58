"""``prune-channels``: remove conv filters (and hidden Linear neurons) of CNNs / MLPs for real.

Filter pruning after Li et al. 2017, "Pruning Filters for Efficient ConvNets" (arXiv
1608.08710), with the dependencies of any ``torch.fx``-traceable model (``graph``, a small
version of Torch-Pruning's dependency graph, Fang et al. 2023, arXiv 2301.12900): a filter
goes with its bias, its BatchNorm / PReLU entries, the depthwise filter that reads it, the
input channels of every consumer (at their offsets after a concatenation; after a flatten
its ``H*W`` block of input columns of the first Linear), and — through a residual addition
or a squeeze-excitation product — the same channel of every other producer of that sum.
Channels that reach something not followed (the model's output, a reshape, attention, a
grouped convolution) are kept whole and logged with the reason; a model fx cannot trace is
refused with the tracer's reason.
"""

from __future__ import annotations

import dataclasses
import logging

from torch import nn

from ...errors import ConfigError
from ..base import CompressContext, matches, register, register_config
from .common import StructuredConfig, run_pruning
from .graph import ChannelGroup, channel_graph, prune_channel_groups

__all__ = ["PruneChannelsConfig", "prunable_channels"]

log = logging.getLogger(__name__)


@register_config
@dataclasses.dataclass(frozen=True)
class PruneChannelsConfig(StructuredConfig):
    """Remove ``fraction`` of the channels of every channel group (the output channels of a
    Conv / hidden Linear and everything coupled to them) with the dependent inputs of the
    next layers. See ``StructuredConfig`` for the other fields; include / exclude match the
    producing layers (a group is pruned when include matches one of its producers and
    exclude none)."""

    name = "prune-channels"


def prunable_channels(
    model: nn.Module, config: PruneChannelsConfig | None = None, kept: dict[str, str] | None = None
) -> list[ChannelGroup]:
    """The channel groups of ``model`` (all of them when ``config`` is None). Layers kept
    whole are logged with the reason (and put in ``kept``); one that ``include`` names
    explicitly (not ``*``) is a ``ConfigError`` with that reason."""
    groups, skipped = channel_graph(model)
    include, exclude = (config.include, config.exclude) if config else (("*",), ())
    explicit = tuple(p for p in include if p != "*")
    for name, reason in skipped.items():
        if explicit and matches(name, explicit, exclude):
            raise ConfigError(
                f"prune-channels cannot prune '{name}': {reason}; the channels of a layer are kept whole "
                "when they reach an operation it does not follow (supported: conv / linear, batchnorm, "
                "prelu, depthwise conv, element-wise ops, pooling, residual add / mul, cat, flatten)"
            )
        if matches(name, include, exclude):
            log.info("prune-channels: '%s' is kept whole: %s", name, reason)
            if kept is not None:
                kept[name] = reason
    if not groups and skipped:
        why = "; ".join(f"'{n}': {r}" for n, r in list(skipped.items())[:3])
        raise ConfigError(
            f"prune-channels cannot prune '{next(iter(skipped))}' or any other layer of "
            f"{type(model).__name__}: every layer's channels are kept whole ({why})"
        )
    return groups


@register(PruneChannelsConfig)
def _prune_channels(model: nn.Module, config: PruneChannelsConfig, ctx: CompressContext) -> nn.Module:
    kept: dict[str, str] = {}
    model = run_pruning(
        model, config, ctx, lambda m: prunable_channels(m, config, kept), prune_channel_groups
    )
    # the output layer always keeps its outputs: name only the others
    inner = {n: r for n, r in kept.items() if "model's output" not in r}
    if inner:
        shown = "; ".join(f"'{n}' ({r})" for n, r in list(inner.items())[:4])
        more = f" and {len(inner) - 4} more" if len(inner) > 4 else ""
        ctx.note(f"prune-channels: {len(inner)} layer(s) kept whole: {shown}{more}")
    return model
