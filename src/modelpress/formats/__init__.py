"""Compressed weight formats (declared fields + reference decode)."""

from .affine import AffineQuantized
from .base import FORMATS, CompressedTensor, register_format

__all__ = ["FORMATS", "AffineQuantized", "CompressedTensor", "register_format"]
