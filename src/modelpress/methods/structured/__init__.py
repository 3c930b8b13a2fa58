"""Structured pruning: heads, FFN neurons, conv channels and whole blocks are removed for
real, leaving an ordinary smaller dense model; see README.md here."""

from . import channels, common, ffn, groups, heads, layers
from .channels import PruneChannelsConfig
from .ffn import PruneFFNConfig
from .heads import PruneHeadsConfig
from .layers import PruneLayersConfig
from .presets import FAMILY

__all__ = [
    "FAMILY",
    "PruneChannelsConfig",
    "PruneFFNConfig",
    "PruneHeadsConfig",
    "PruneLayersConfig",
    "channels",
    "common",
    "ffn",
    "groups",
    "heads",
    "layers",
]
