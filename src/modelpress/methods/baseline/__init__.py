"""Baseline methods: dtype casts (fp16, bf16) and dynamic INT8 (see README.md here)."""

from . import cast, int8_dynamic

__all__ = ["cast", "int8_dynamic"]
