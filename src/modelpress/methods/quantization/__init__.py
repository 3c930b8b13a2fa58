"""Quantization methods; see README.md here."""

from . import awq, gptq, mixed, nonuniform, qat, smoothquant, static_int8, weight_only
from .awq import AWQConfig
from .gptq import GPTQConfig
from .mixed import MixedPrecisionConfig
from .nonuniform import NonUniformConfig
from .qat import QATConfig
from .smoothquant import SmoothQuantConfig
from .static_int8 import StaticInt8Config
from .weight_only import WeightOnlyConfig

__all__ = [
    "AWQConfig",
    "GPTQConfig",
    "MixedPrecisionConfig",
    "NonUniformConfig",
    "QATConfig",
    "SmoothQuantConfig",
    "StaticInt8Config",
    "WeightOnlyConfig",
    "awq",
    "gptq",
    "mixed",
    "nonuniform",
    "qat",
    "smoothquant",
    "static_int8",
    "weight_only",
]
