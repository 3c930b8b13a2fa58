"""Affine integer format: ``qdata, scale[, zero_point]``.

``qdata`` holds one integer per weight in an int8 (symmetric) or uint8 (asymmetric)
container, shape = the weight's 2-D shape ``(rows, cols)``; ``scale`` is ``(rows, n_groups)``
float32, one per output channel (``group_size=None``) or per group of columns.
Sub-byte packing belongs to a format of its own (quantization issue).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from ..primitives.quant import choose_qparams, dequantize, quantize
from .base import CompressedTensor, register_format


@register_format
class AffineQuantized(CompressedTensor):
    format_name = "affine"
    format_version = 1
    fields = ("qdata", "scale")
    optional_fields = ("zero_point",)

    def __init__(
        self,
        shape: Sequence[int],
        *,
        qdata: torch.Tensor,
        scale: torch.Tensor,
        zero_point: torch.Tensor | None = None,
        bits: int = 8,
        group_size: int | None = None,
    ) -> None:
        super().__init__(shape, qdata=qdata, scale=scale, zero_point=zero_point)
        if len(self.shape) != 2:
            raise ValueError(f"affine format holds 2-D weights, got shape {tuple(self.shape)}")
        self.bits = int(bits)
        self.group_size = None if group_size is None else int(group_size)

    @classmethod
    def encode(
        cls, w: torch.Tensor, bits: int = 8, *, symmetric: bool = True, group_size: int | None = None
    ) -> AffineQuantized:
        scale, zp = choose_qparams(w, bits, symmetric=symmetric, group_size=group_size)
        q = quantize(w, scale, zp, bits, group_size=group_size)
        return cls(w.shape, qdata=q, scale=scale, zero_point=zp, bits=bits, group_size=group_size)

    @property
    def symmetric(self) -> bool:
        return self.zero_point is None

    def decode(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return dequantize(self.qdata, self.scale, self.zero_point, group_size=self.group_size, dtype=dtype)

    def meta(self) -> dict[str, Any]:
        return {"bits": self.bits, "group_size": self.group_size}
