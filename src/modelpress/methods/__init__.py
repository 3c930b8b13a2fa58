"""Compression methods, one family per sub-package. Importing this package registers them
(explicit imports, no package walking)."""

from . import baseline, clustering
from .base import CONFIGS, HANDLERS, PRESETS, CompressContext, MethodConfig, register, register_config

__all__ = [
    "CONFIGS",
    "HANDLERS",
    "PRESETS",
    "CompressContext",
    "MethodConfig",
    "baseline",
    "clustering",
    "register",
    "register_config",
]
