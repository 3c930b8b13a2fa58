"""Benchmark presets of structured pruning (family "pruning").

Importance is the Taylor score on 8 train batches (Molchanov et al. 2019) since the fine-tune
needs the task's data anyway; each preset ends with one epoch of fine-tuning on the train
split (validation after it), which recovers most of what the pruning cost.
"""

from __future__ import annotations

from ..base import MethodConfig, register_preset
from .channels import PruneChannelsConfig
from .ffn import PruneFFNConfig
from .heads import PruneHeadsConfig

__all__ = ["FAMILY"]

FAMILY = "pruning"


@register_preset(
    "prune-heads-25",
    "structured: remove 25% of the attention heads of every layer (Taylor importance), one epoch fine-tune",
    FAMILY,
)
def _heads25() -> list[MethodConfig]:
    return [PruneHeadsConfig(fraction=0.25, importance="taylor", epochs=1)]


@register_preset(
    "prune-ffn-50",
    "structured: remove 50% of the FFN neurons of every layer (Taylor importance), one epoch fine-tune",
    FAMILY,
)
def _ffn50() -> list[MethodConfig]:
    return [PruneFFNConfig(fraction=0.5, importance="taylor", epochs=1)]


@register_preset(
    "prune-structured",
    "structured: 25% of the heads and 50% of the FFN neurons of every layer, then one epoch fine-tune",
    FAMILY,
)
def _structured() -> list[MethodConfig]:
    return [
        PruneHeadsConfig(fraction=0.25, importance="taylor"),
        PruneFFNConfig(fraction=0.5, importance="taylor", epochs=1),
    ]


@register_preset(
    "prune-channels-50",
    "structured: remove 50% of the channels of every channel group of a CNN (Taylor importance), "
    "one epoch fine-tune",
    FAMILY,
)
def _channels50() -> list[MethodConfig]:
    return [PruneChannelsConfig(fraction=0.5, importance="taylor", epochs=1)]
