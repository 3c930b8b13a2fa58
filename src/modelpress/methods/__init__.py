"""Compression methods, one family per sub-package. Importing this package registers them
(explicit imports, no package walking)."""

from . import baseline, binary, clustering, distillation, fold, lowrank, pruning, quantization, structured
from .base import CONFIGS, HANDLERS, PRESETS, CompressContext, MethodConfig, register, register_config

__all__ = [
    "CONFIGS",
    "HANDLERS",
    "PRESETS",
    "CompressContext",
    "MethodConfig",
    "baseline",
    "binary",
    "clustering",
    "distillation",
    "fold",
    "lowrank",
    "pruning",
    "quantization",
    "register",
    "register_config",
    "structured",
]
