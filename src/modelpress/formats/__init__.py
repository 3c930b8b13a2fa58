"""Compressed weight formats (declared fields + reference decode)."""

from .affine import AffineQuantized
from .base import FORMATS, CompressedTensor, register_format
from .codebook import Codebook

__all__ = ["FORMATS", "AffineQuantized", "Codebook", "CompressedTensor", "register_format"]
