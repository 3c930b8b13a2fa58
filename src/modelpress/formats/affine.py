"""Affine integer format: ``qdata, scale[, zero_point]``.

One integer per weight, ``q = round(w / scale) [+ zero_point]``, with ``scale`` of shape
``(rows, n_groups)`` (one per output channel when ``group_size`` is None, else one per run
of ``group_size`` columns) and ``zero_point`` likewise (int16) when asymmetric.

8-bit ``qdata`` is an int8 (symmetric) or uint8 (asymmetric) tensor of the weight's 2-D
shape, used directly by INT8 kernels. Below 8 bits the codes ``q - qmin`` are stored as a
bit stream of exactly ``bits`` bits each (two 4-bit values per byte, tight 3-bit and 2-bit
packing); in memory they sit in 1-, 2-, 4- or 8-bit containers (``primitives.bitpack``):
no conversion at load for 2 and 4 bits.

An optional ``in_scale`` (one float per input column) divides the decoded columns: AWQ
quantizes ``W·diag(s)`` and stores ``s``, so ``Ŵ = Q(W·diag(s))·diag(s)⁻¹`` (no separate
op on the activations).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import torch

from ..primitives.bitpack import (
    container_bits,
    container_rows,
    from_container,
    pack_bits,
    packed_nbytes,
    stream_to_container,
    to_container,
)
from ..primitives.quant import choose_qparams, dequantize, qrange, quantize
from .base import CompressedTensor, check, check_field, register_format


@register_format
class AffineQuantized(CompressedTensor):
    format_name = "affine"
    format_version = 1
    fields = ("qdata", "scale")
    optional_fields = ("zero_point", "in_scale")
    qdata: torch.Tensor
    scale: torch.Tensor
    zero_point: torch.Tensor | None
    in_scale: torch.Tensor | None

    def __init__(
        self,
        shape: Sequence[int],
        *,
        qdata: torch.Tensor,
        scale: torch.Tensor,
        zero_point: torch.Tensor | None = None,
        in_scale: torch.Tensor | None = None,
        bits: int = 8,
        group_size: int | None = None,
    ) -> None:
        """``qdata``: for 8 bits the integer tensor; below 8 bits the in-memory packing of
        the unsigned codes (use ``encode`` or ``from_ints`` to build one)."""
        super().__init__(shape, qdata=qdata, scale=scale, zero_point=zero_point, in_scale=in_scale)
        if len(self.shape) != 2:
            raise ValueError(f"affine format holds 2-D weights, got shape {tuple(self.shape)}")
        self.bits = int(bits)
        self.group_size = None if group_size is None else int(group_size)

    @classmethod
    def from_ints(
        cls,
        shape: Sequence[int],
        q: torch.Tensor,
        scale: torch.Tensor,
        zero_point: torch.Tensor | None,
        bits: int,
        group_size: int | None,
        in_scale: torch.Tensor | None = None,
    ) -> AffineQuantized:
        if bits < 8:
            qmin, _ = qrange(bits, zero_point is None)
            q = to_container((q.to(torch.int32) - qmin).reshape(-1), bits)
        return cls(
            shape,
            qdata=q,
            scale=scale,
            zero_point=zero_point,
            in_scale=in_scale,
            bits=bits,
            group_size=group_size,
        )

    @classmethod
    def encode(
        cls, w: torch.Tensor, bits: int = 8, *, symmetric: bool = True, group_size: int | None = None
    ) -> AffineQuantized:
        scale, zp = choose_qparams(w, bits, symmetric=symmetric, group_size=group_size)
        q = quantize(w, scale, zp, bits, group_size=group_size)
        return cls.from_ints(w.shape, q, scale, zp, bits, group_size)

    @property
    def symmetric(self) -> bool:
        return self.zero_point is None

    def int_values(self) -> torch.Tensor:
        """The integers ``q`` as int32, shape ``(rows, cols)``."""
        if self.bits == 8:
            return self.qdata.to(torch.int32)
        u = from_container(self.qdata, self.bits, self.shape.numel())
        qmin, _ = qrange(self.bits, self.symmetric)
        return (u.to(torch.int32) + qmin).reshape(self.shape)

    def decode(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        if self.shape.numel() > (1 << 20):
            from .codebook import decode_in_row_chunks

            return decode_in_row_chunks(self, dtype)  # bounded temporaries for large weights
        w = dequantize(self.int_values(), self.scale, self.zero_point, group_size=self.group_size)
        if self.in_scale is not None:
            w = w.div_(self.in_scale)
        return w.to(dtype)

    def decode_rows(self, rows: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Decode only the given rows (an embedding lookup), ``(len(rows), cols)``."""
        cols = int(self.shape[1])
        if self.bits == 8:
            q = self.qdata[rows].to(torch.int32)
        else:
            u = container_rows(self.qdata, self.bits, int(self.shape[0]), cols, rows)
            if u is None:
                q = self.int_values()[rows]
            else:
                q = u.to(torch.int32) + qrange(self.bits, self.symmetric)[0]
        zp = None if self.zero_point is None else self.zero_point[rows]
        w = dequantize(q, self.scale[rows], zp, group_size=self.group_size)
        if self.in_scale is not None:
            w = w.div_(self.in_scale)
        return w.to(dtype)

    def meta(self) -> dict[str, Any]:
        return {"bits": self.bits, "group_size": self.group_size}

    # -- checks at load (stored layout) ---------------------------------------------------
    meta_types: ClassVar[dict[str, tuple[str, ...]]] = {"bits": ("int",), "group_size": ("int", "none")}

    def validate(self) -> None:
        rows, cols = (int(d) for d in self.shape)
        check(2 <= self.bits <= 8, f"bits must be in 2..8, got {self.bits}")
        g = self.group_size
        check(g is None or 0 < g, f"group_size must be a positive integer, got {g}")
        check(g is None or cols % g == 0, f"group_size {g} does not divide the {cols} columns")
        n_groups = 1 if g is None else cols // g
        check_field(self.scale, "scale", (rows, n_groups), "float")
        check_field(self.zero_point, "zero_point", (rows, n_groups), "int", required=False)
        if self.in_scale is not None:  # (cols,) or (1, cols): divides the decoded columns
            ins = self.in_scale
            check_field(ins, "in_scale", (cols,) if ins.dim() == 1 else (1, cols), "float")
        if self.bits == 8:
            check_field(self.qdata, "qdata", (rows, cols), "int8/uint8")
        else:  # exactly ``bits`` bits per weight
            check_field(self.qdata, "qdata", (packed_nbytes(rows * cols, self.bits),), "uint8")

    def load_nbytes(self) -> int:
        rest = sum(b.numel() * b.element_size() for n, b in self.named_buffers() if n != "qdata")
        return rest + packed_nbytes(self.shape.numel(), container_bits(self.bits) if self.bits < 8 else 8)

    # -- storage <-> memory (below 8 bits) ------------------------------------------------
    def to_storage(self) -> dict[str, torch.Tensor]:
        out = super().to_storage()
        if self.bits < 8:  # exactly ``bits`` bits per code on disk
            qmin, _ = qrange(self.bits, self.symmetric)
            out["qdata"] = pack_bits((self.int_values() - qmin).reshape(-1), self.bits)
        return out

    def from_storage(self, stored: dict[str, torch.Tensor]) -> None:
        stored = dict(stored)
        if self.bits < 8 and "qdata" in stored and container_bits(self.bits) != self.bits:
            q = stored["qdata"]  # 3-bit stream -> nibbles; 2- and 4-bit streams are the containers
            stored["qdata"] = stream_to_container(q.cpu(), self.bits, self.shape.numel()).to(q.device)
        super().from_storage(stored)
