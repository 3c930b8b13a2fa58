"""Binary and ternary weight formats: ``bits[, scale]`` and ``codes, scale``.

``binary``: one sign bit per weight (bit 1 = +1, bit 0 = -1; ``sign(0)`` is +1), stored as
one little-endian bit stream of exactly 1 bit per weight (``primitives.bitpack``), the same
layout in memory. An optional float ``scale`` ``(rows, n_groups)`` multiplies the signs:
one α per output row (BWN / XNOR-Net, ``α = mean|W|``), or per run of ``group_size``
columns; without it the weight is ``±1`` (BNN).

``ternary``: one code in {-1, 0, +1} per weight times a float ``scale``, one per tensor
``(1, 1)`` or per row ``(rows, 1)`` (BitNet b1.58's absmean). The codes ``c + 1`` in
{0, 1, 2} are stored either as 2-bit fields, 4 per byte (``packing="2bit"``), or as base-3
digits, 5 per byte (``packing="base3"``: ``Σ_i d_i·3^i`` ≤ 242, 1.6 bits per weight). The
stored layout is the in-memory one; base-3 bytes decode through a 256 x 5 look-up table.

Both hold 2-D weights ``(rows, cols)`` (Linear and Embedding weights).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import torch

from ..primitives.bitpack import pack_bits, packed_nbytes, unpack_bits
from .base import CompressedTensor, check, check_field, register_format

__all__ = [
    "BinaryTensor",
    "TernaryTensor",
    "pack_base3",
    "pack_ternary",
    "unpack_base3",
    "unpack_ternary",
]

PACKINGS = ("2bit", "base3")
TERNARY_GRANULARITIES = ("tensor", "channel")


# -- base-3 packing (pure functions) -------------------------------------------------------

_POW3 = torch.tensor([1, 3, 9, 27, 81], dtype=torch.int32)


def base3_nbytes(n: int) -> int:
    return (n + 4) // 5


def pack_base3(digits: torch.Tensor) -> torch.Tensor:
    """Digits in {0, 1, 2} (any shape, read flat) -> uint8, 5 per byte: byte ``j`` is
    ``Σ_i d[5j+i]·3^i`` (the last byte padded with zero digits)."""
    flat = digits.reshape(-1)
    if flat.numel() and (int(flat.min()) < 0 or int(flat.max()) > 2):
        raise ValueError("base-3 digits must lie in {0, 1, 2}")
    n = flat.numel()
    d = torch.cat([flat.to(torch.int32), flat.new_zeros((-n) % 5, dtype=torch.int32)]).reshape(-1, 5)
    return (d * _POW3.to(d.device)).sum(1, dtype=torch.int32).to(torch.uint8)


@torch.no_grad()
def _base3_lut(device: torch.device) -> torch.Tensor:
    v = torch.arange(256, dtype=torch.int32, device=device).unsqueeze(1)
    return ((v // _POW3.to(device)) % 3).to(torch.uint8)  # (256, 5) digits of each byte value


def unpack_base3(packed: torch.Tensor, n: int) -> torch.Tensor:
    """Inverse of ``pack_base3``: the first ``n`` digits as uint8."""
    if packed.dtype != torch.uint8:
        raise ValueError(f"packed digits must be uint8, got {packed.dtype}")
    if packed.numel() < base3_nbytes(n):
        raise ValueError(f"{packed.numel()} bytes cannot hold {n} base-3 digits")
    lut = _base3_lut(packed.device)
    return lut[packed[: base3_nbytes(n)].long()].reshape(-1)[:n]


def pack_ternary(codes: torch.Tensor, packing: str) -> torch.Tensor:
    """Codes in {-1, 0, +1} -> uint8 bytes in ``packing`` (``2bit`` or ``base3``)."""
    u = (codes.reshape(-1).to(torch.int32) + 1).clamp_(0, 3)  # checked below by the packers
    if codes.numel() and (int(codes.min()) < -1 or int(codes.max()) > 1):
        raise ValueError("ternary codes must lie in {-1, 0, +1}")
    return pack_bits(u, 2) if packing == "2bit" else pack_base3(u)


def unpack_ternary(packed: torch.Tensor, packing: str, n: int) -> torch.Tensor:
    """Inverse of ``pack_ternary``: ``n`` codes as int8 in {-1, 0, +1}."""
    u = unpack_bits(packed, 2, n) if packing == "2bit" else unpack_base3(packed, n)
    return u.to(torch.int8) - 1


def ternary_nbytes(n: int, packing: str) -> int:
    return packed_nbytes(n, 2) if packing == "2bit" else base3_nbytes(n)


def best_packing(n: int) -> str:
    """``base3`` where it takes fewer bytes than ``2bit`` (any ``n`` above 4), else ``2bit``
    (a 2-bit code decodes with shifts alone)."""
    return "base3" if base3_nbytes(n) < packed_nbytes(n, 2) else "2bit"


# -- binary ---------------------------------------------------------------------------------


@register_format
class BinaryTensor(CompressedTensor):
    format_name = "binary"
    format_version = 1
    fields = ("bits",)
    optional_fields = ("scale",)
    bits: torch.Tensor
    scale: torch.Tensor | None

    def __init__(
        self,
        shape: Sequence[int],
        *,
        bits: torch.Tensor,
        scale: torch.Tensor | None = None,
        group_size: int | None = None,
    ) -> None:
        """``bits``: ``(ceil(rows*cols/8),)`` uint8 sign bits (1 = +1), ``scale``:
        ``(rows, n_groups)`` float or None (±1 weights)."""
        super().__init__(shape, bits=bits, scale=scale)
        if len(self.shape) != 2:
            raise ValueError(f"binary format holds 2-D weights, got shape {tuple(self.shape)}")
        self.group_size = None if group_size is None else int(group_size)

    @classmethod
    def from_signs(
        cls, signs: torch.Tensor, scale: torch.Tensor | None = None, group_size: int | None = None
    ) -> BinaryTensor:
        """From a ``(rows, cols)`` tensor of ±1 (anything >= 0 counts as +1)."""
        packed = pack_bits((signs.reshape(-1) >= 0).to(torch.uint8), 1)
        return cls(signs.shape, bits=packed, scale=scale, group_size=group_size)

    @classmethod
    def encode(cls, w: torch.Tensor, *, scaled: bool = True, group_size: int | None = None) -> BinaryTensor:
        """BWN / XNOR-Net (Rastegari et al., arXiv 1603.05279): ``sign(W)·α`` with
        ``α = mean|W|`` per row (or per group of ``group_size`` columns), the least-squares
        optimal scale for given signs; ``scaled=False``: ``sign(W)`` alone (BNN)."""
        w = w.detach().float()
        scale = binary_scale(w, group_size) if scaled else None
        return cls.from_signs(w, scale, group_size if scaled else None)

    def signs(self) -> torch.Tensor:
        """``(rows, cols)`` float32 ±1."""
        b = unpack_bits(self.bits, 1, self.shape.numel()).reshape(self.shape)
        return b.to(torch.float32).mul_(2).sub_(1)

    def _scaled(self, s: torch.Tensor, scale: torch.Tensor | None) -> torch.Tensor:
        if scale is None:
            return s
        g = int(self.shape[1]) if self.group_size is None else self.group_size
        return s.mul_(scale.float().repeat_interleave(g, dim=1))

    def decode(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return self._scaled(self.signs(), self.scale).to(dtype)

    def decode_rows(self, rows: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        cols = int(self.shape[1])
        if cols % 8:
            s = self.signs()[rows]
        else:  # each row starts on a byte: unpack only the looked-up rows
            per_row = self.bits[: int(self.shape[0]) * cols // 8].reshape(int(self.shape[0]), cols // 8)[rows]
            shifts = torch.arange(8, device=per_row.device, dtype=torch.uint8)
            b = (per_row.unsqueeze(-1) >> shifts) & 1
            s = b.reshape(len(rows), cols).to(torch.float32).mul_(2).sub_(1)
        return self._scaled(s, None if self.scale is None else self.scale[rows]).to(dtype)

    def meta(self) -> dict[str, Any]:
        return {"group_size": self.group_size}

    meta_types: ClassVar[dict[str, tuple[str, ...]]] = {"group_size": ("int", "none")}

    def validate(self) -> None:
        rows, cols = (int(d) for d in self.shape)
        g = self.group_size
        check(g is None or 0 < g, f"group_size must be a positive integer, got {g}")
        check(g is None or cols % g == 0, f"group_size {g} does not divide the {cols} columns")
        check(g is None or self.scale is not None, "group_size needs a scale")
        check_field(self.bits, "bits", (packed_nbytes(rows * cols, 1),), "uint8")
        if self.scale is not None:
            check_field(self.scale, "scale", (rows, 1 if g is None else cols // g), "float")


def binary_scale(w: torch.Tensor, group_size: int | None) -> torch.Tensor:
    """``α = mean|W|`` per row ``(rows, 1)`` or per group ``(rows, cols // group_size)``."""
    rows, cols = w.shape
    g = cols if group_size is None else group_size
    return w.detach().float().abs().reshape(rows, cols // g, g).mean(-1).contiguous()


# -- ternary --------------------------------------------------------------------------------

#: BitNet b1.58's ε: the scale is at least this (an all-zero weight stays zero)
TERNARY_EPS = 1e-8


def ternary_scale(w: torch.Tensor, granularity: str) -> torch.Tensor:
    """BitNet b1.58's absmean ``γ = mean|W|``: ``(1, 1)`` per tensor or ``(rows, 1)`` per
    row, at least ``TERNARY_EPS``."""
    a = w.detach().float().abs()
    g = a.mean().reshape(1, 1) if granularity == "tensor" else a.mean(1, keepdim=True)
    return g.clamp_min(TERNARY_EPS).contiguous()


def ternary_codes(w: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``RoundClip(W / γ, -1, 1)`` as int8 (BitNet b1.58, arXiv 2402.17764, eq. 1-3)."""
    return torch.round(w.float() / scale).clamp_(-1, 1).to(torch.int8)


@register_format
class TernaryTensor(CompressedTensor):
    format_name = "ternary"
    format_version = 1
    fields = ("codes", "scale")
    codes: torch.Tensor
    scale: torch.Tensor

    def __init__(
        self,
        shape: Sequence[int],
        *,
        codes: torch.Tensor,
        scale: torch.Tensor,
        granularity: str = "channel",
        packing: str = "2bit",
    ) -> None:
        """``codes``: the packed codes (``pack_ternary``), ``scale``: ``(1, 1)`` or
        ``(rows, 1)`` float."""
        super().__init__(shape, codes=codes, scale=scale)
        if len(self.shape) != 2:
            raise ValueError(f"ternary format holds 2-D weights, got shape {tuple(self.shape)}")
        self.granularity = str(granularity)
        self.packing = str(packing)

    @classmethod
    def from_codes(
        cls, codes: torch.Tensor, scale: torch.Tensor, granularity: str, packing: str = "auto"
    ) -> TernaryTensor:
        """From ``(rows, cols)`` codes in {-1, 0, +1}; ``packing="auto"``: ``best_packing``."""
        if packing == "auto":
            packing = best_packing(codes.numel())
        return cls(
            codes.shape,
            codes=pack_ternary(codes, packing),
            scale=scale,
            granularity=granularity,
            packing=packing,
        )

    @classmethod
    def encode(cls, w: torch.Tensor, *, granularity: str = "channel", packing: str = "auto") -> TernaryTensor:
        """BitNet b1.58 absmean ternarization (Ma et al., arXiv 2402.17764):
        ``W ≈ γ·RoundClip(W/γ, -1, 1)`` with ``γ = mean|W|`` per tensor or per row."""
        scale = ternary_scale(w, granularity)
        return cls.from_codes(ternary_codes(w, scale), scale, granularity, packing)

    def int_values(self) -> torch.Tensor:
        """``(rows, cols)`` int8 codes in {-1, 0, +1}."""
        return unpack_ternary(self.codes, self.packing, self.shape.numel()).reshape(self.shape)

    def decode(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return (self.int_values().to(torch.float32) * self.scale.float()).to(dtype)

    def decode_rows(self, rows: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        r, cols = int(self.shape[0]), int(self.shape[1])
        per = 4 if self.packing == "2bit" else 5
        if cols % per:
            q = self.int_values()[rows]
        else:  # rows start on bytes: unpack only the looked-up ones
            packed = self.codes[: r * cols // per].reshape(r, cols // per)[rows].reshape(-1)
            q = unpack_ternary(packed, self.packing, len(rows) * cols).reshape(len(rows), cols)
        s = self.scale.float() if self.granularity == "tensor" else self.scale.float()[rows]
        return (q.to(torch.float32) * s).to(dtype)

    def meta(self) -> dict[str, Any]:
        return {"granularity": self.granularity, "packing": self.packing}

    meta_types: ClassVar[dict[str, tuple[str, ...]]] = {"granularity": ("str",), "packing": ("str",)}

    def validate(self) -> None:
        rows, cols = (int(d) for d in self.shape)
        check(self.packing in PACKINGS, f"packing must be one of {', '.join(PACKINGS)}, got {self.packing!r}")
        check(
            self.granularity in TERNARY_GRANULARITIES,
            f"granularity must be one of {', '.join(TERNARY_GRANULARITIES)}, got {self.granularity!r}",
        )
        check_field(self.scale, "scale", (1 if self.granularity == "tensor" else rows, 1), "float")
        check_field(self.codes, "codes", (ternary_nbytes(rows * cols, self.packing),), "uint8")

    def validate_loaded(self) -> None:
        """Every stored code is a valid one: 2-bit fields below 3, base-3 bytes below 243."""
        c = self.codes
        if not c.numel():
            return
        if self.packing == "base3":
            check(int(c.max()) < 243, "a base-3 byte exceeds 242 (not 5 ternary digits)")
        else:
            u = unpack_bits(c, 2, self.shape.numel())
            check(int(u.max()) <= 2, "a 2-bit ternary code is 3 (only 0, 1, 2 stand for -1, 0, +1)")
