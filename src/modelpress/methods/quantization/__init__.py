"""Quantization methods (weight-only round-to-nearest so far); see README.md here."""

from . import weight_only
from .weight_only import WeightOnlyConfig

__all__ = ["WeightOnlyConfig", "weight_only"]
