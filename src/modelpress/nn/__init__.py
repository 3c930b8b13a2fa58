"""Modules that run compressed weights."""

from .base import MODULES, CompressedModule, register_module
from .decoded import DecodedConv, DecodedEmbedding, DecodedLinear
from .int8 import Int8DynamicLinear, Int8Embedding, Int8SmoothLinear, Int8StaticLinear
from .rnn import DecodedRNN

__all__ = [
    "MODULES",
    "CompressedModule",
    "DecodedConv",
    "DecodedEmbedding",
    "DecodedLinear",
    "DecodedRNN",
    "Int8DynamicLinear",
    "Int8Embedding",
    "Int8SmoothLinear",
    "Int8StaticLinear",
    "register_module",
]
