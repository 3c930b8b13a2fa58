"""Binarization (BWN, XNOR, BNN) and ternarization (BitNet b1.58); see README.md here."""

from . import binarize, presets
from .binarize import BinaryConfig, TernaryConfig

__all__ = ["BinaryConfig", "TernaryConfig", "binarize", "presets"]
