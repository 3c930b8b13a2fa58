"""Compressed weight formats (declared fields + reference decode)."""

from .affine import AffineQuantized
from .base import FORMATS, CompressedTensor, register_format
from .binary import BinaryTensor, TernaryTensor
from .codebook import Codebook
from .pq import ProductQuantized
from .sparse import SparseTensor

__all__ = [
    "FORMATS",
    "AffineQuantized",
    "BinaryTensor",
    "Codebook",
    "CompressedTensor",
    "ProductQuantized",
    "SparseTensor",
    "TernaryTensor",
    "register_format",
]
