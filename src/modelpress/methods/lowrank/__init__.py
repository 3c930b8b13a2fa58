"""Low-rank factorization (truncated SVD, activation-aware ASVD / SVD-LLM); see README.md here."""

from . import factorize, presets, svd
from .factorize import LowRankConfig
from .presets import FAMILY

__all__ = ["FAMILY", "LowRankConfig", "factorize", "presets", "svd"]
