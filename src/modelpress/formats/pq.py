"""Product-quantization (vector) format: ``codes, codebook``.

Each row of a weight ``(rows, cols)`` is cut into sub-vectors of ``dim`` consecutive
weights; each sub-vector is replaced by the index of its nearest of ``2**bits`` centroids
of one codebook per layer, ``codebook (k, dim)``. Bits per weight = ``bits / dim``
(+ the codebook). Jégou, Douze, Schmid, "Product quantization for nearest neighbor
search" (TPAMI 2011); for weights, Gong et al., "Compressing Deep Convolutional Networks
using Vector Quantization" (arXiv 1412.6115).

``codes`` are stored as a bit stream of exactly ``bits`` bits per sub-vector; in memory one
byte each (``bits`` <= 8).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import torch

from ..primitives.bitpack import pack_bits, packed_nbytes, unpack_bits
from .base import CompressedTensor, check, check_field, register_format

__all__ = ["ProductQuantized"]


@register_format
class ProductQuantized(CompressedTensor):
    format_name = "pq"
    format_version = 1
    fields = ("codes", "codebook")
    codes: torch.Tensor
    codebook: torch.Tensor

    def __init__(
        self, shape: Sequence[int], *, codes: torch.Tensor, codebook: torch.Tensor, bits: int, dim: int
    ):
        super().__init__(shape, codes=codes, codebook=codebook)
        self.bits, self.dim = int(bits), int(dim)
        self.rows = int(self.shape[0])
        self.cols = int(self.shape.numel() // max(1, self.rows))
        if self.cols % self.dim:
            raise ValueError(f"pq: sub-vector size {self.dim} does not divide the row length {self.cols}")
        self.n_codes = self.rows * self.cols // self.dim

    def decode(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        cb = self.codebook.float()
        return cb[self.codes.to(torch.int32)].reshape(self.shape).to(dtype)

    def decode_rows(self, rows: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        codes = self.codes.reshape(self.rows, self.cols // self.dim)[rows].to(torch.int32)
        return self.codebook.float()[codes].reshape(rows.shape[0], self.cols).to(dtype)

    def meta(self) -> dict[str, Any]:
        return {"bits": self.bits, "dim": self.dim}

    # -- checks at load (stored layout) ---------------------------------------------------
    meta_types: ClassVar[dict[str, tuple[str, ...]]] = {"bits": ("int",), "dim": ("int",)}

    def validate(self) -> None:
        check(1 <= self.bits <= 8, f"bits must be in 1..8, got {self.bits}")
        check(self.dim > 0, f"dim must be positive, got {self.dim}")
        check_field(self.codebook, "codebook", (1 << self.bits, self.dim), "float")
        check_field(self.codes, "codes", (packed_nbytes(self.n_codes, self.bits),), "uint8")

    def load_nbytes(self) -> int:
        return self.n_codes + self.codebook.numel() * self.codebook.element_size()  # a byte per code

    def to_storage(self) -> dict[str, torch.Tensor]:
        return {**super().to_storage(), "codes": pack_bits(self.codes, self.bits)}

    def from_storage(self, stored: dict[str, torch.Tensor]) -> None:
        stored = dict(stored)
        if "codes" in stored:
            c = stored["codes"]
            stored["codes"] = unpack_bits(c.cpu(), self.bits, self.n_codes).to(c.device)
        super().from_storage(stored)
