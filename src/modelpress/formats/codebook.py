"""Codebook (weight-sharing) format: ``codes, codebook[, scale][, mask]``.

Each weight is replaced by a ``bits``-bit index into a small table of shared values
(k-means centroids, NF4 levels, ...). Views of the weight: 2-D ``(rows, cols)`` with
``rows = shape[0]`` and ``cols`` = the rest flattened (conv kernels included).

Granularity (one codebook of ``k = 2**bits`` entries per ...):
- ``tensor``: one for the whole tensor, ``codebook (1, k)``;
- ``channel``: one per row / output channel, ``codebook (rows, k)``;
- ``group``: one per run of ``group_size`` weights of a row, ``codebook (rows*cols/G, k)``;
- ``group-scaled``: one shared ``codebook (1, k)`` times a per-group ``scale (n_groups, 1)``.

Codebook dtype: ``float32``, ``float16``, or ``int8`` with a per-codebook ``scale``
(for ``group-scaled``, ``scale`` is the group scale and the shared codebook stays float).

``mask`` (optional, sparsity-preserving): positions not in the mask decode to exactly 0
and have no code; ``codes`` then holds one code per kept weight, in row-major order.

Storage vs memory: on disk ``codes`` is a bit stream of exactly ``bits`` bits per code
(``coding="packed"``) or that stream's code bytes entropy-coded with zstd
(``coding="zstd"``, Huffman + FSE stages); the mask is a 1-bit-per-weight stream, itself
zstd-coded when ``mask_coding="zstd"`` (the default of ``from_codes`` with ``coding="zstd"``:
at 8 % density a mask costs ~0.42 instead of 1 bit per weight, what Deep Compression's
Huffman-coded relative indices achieve; manifests without ``mask_coding`` read as
``packed``). In memory
codes sit in 1-, 2-, 4- or 8-bit containers (``primitives.bitpack``; for 1, 2, 4 and 8
bits that is the stored stream itself, 3-bit codes take nibbles, 5- to 7-bit codes bytes),
rebuilt after load by ``from_storage``; the mask is a bool tensor.
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
    unpack_bits,
)
from ..primitives.entropy import zstd_decode, zstd_encode
from .base import CompressedTensor, check, check_field, check_zstd_size, register_format

__all__ = ["GRANULARITIES", "Codebook", "decode_in_row_chunks"]

GRANULARITIES = ("tensor", "channel", "group", "group-scaled")
CODEBOOK_DTYPES = ("float32", "float16", "int8")
CODINGS = ("packed", "zstd")


def decode_in_row_chunks(
    fmt: CompressedTensor, dtype: torch.dtype, chunk_elems: int = 1 << 20
) -> torch.Tensor:
    """``fmt.decode()`` through ``fmt.decode_rows`` on chunks of rows, so that decoding a
    large weight (an LM head) needs no full-size index or integer temporaries."""
    rows = int(fmt.shape[0])
    cols = int(fmt.shape.numel() // max(1, rows))
    out = torch.empty(rows, cols, dtype=dtype, device=fmt.device)
    step = max(1, chunk_elems // max(1, cols))
    for r in range(0, rows, step):
        idx = torch.arange(r, min(rows, r + step), device=fmt.device)
        out[r : r + step] = fmt.decode_rows(idx, dtype)
    return out.reshape(fmt.shape)


@register_format
class Codebook(CompressedTensor):
    format_name = "codebook"
    format_version = 1
    fields = ("codes", "codebook")
    optional_fields = ("scale", "mask")
    codes: torch.Tensor
    codebook: torch.Tensor
    scale: torch.Tensor | None
    mask: torch.Tensor | None

    def __init__(
        self,
        shape: Sequence[int],
        *,
        codes: torch.Tensor,
        codebook: torch.Tensor,
        scale: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        bits: int,
        granularity: str = "channel",
        group_size: int | None = None,
        coding: str = "packed",
        n_codes: int | None = None,
        runtime: bool = False,
        mask_coding: str = "packed",
    ) -> None:
        """``codes``: uint8 codes (flat, ``runtime=True`` or from ``encode``) or the stored
        stream (``runtime=False``, when rebuilt from a manifest)."""
        super().__init__(shape, codes=codes, codebook=codebook, scale=scale, mask=mask)
        if granularity not in GRANULARITIES:
            raise ValueError(f"unknown granularity '{granularity}' (known: {', '.join(GRANULARITIES)})")
        if coding not in CODINGS:
            raise ValueError(f"unknown code coding '{coding}' (known: {', '.join(CODINGS)})")
        if mask_coding not in CODINGS:
            raise ValueError(f"unknown mask coding '{mask_coding}' (known: {', '.join(CODINGS)})")
        self.bits = int(bits)
        self.granularity = granularity
        self.group_size = None if group_size is None else int(group_size)
        self.coding = coding
        self.mask_coding = mask_coding
        self.rows = int(self.shape[0])
        self.cols = int(self.shape.numel() // max(1, self.rows))
        self.n_codes = int(n_codes) if n_codes is not None else self.shape.numel()
        if runtime:
            self.codes = to_container(codes.reshape(-1), self.bits)

    # -- construction -------------------------------------------------------------------
    @classmethod
    def from_codes(
        cls,
        shape: Sequence[int],
        codes: torch.Tensor,
        codebook: torch.Tensor,
        *,
        bits: int,
        granularity: str,
        group_size: int | None = None,
        scale: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        codebook_dtype: str = "float32",
        coding: str = "packed",
        mask_coding: str | None = None,
    ) -> Codebook:
        """Build from uint8 codes (one per weight, or per kept weight with a mask) and a
        float codebook; converts the codebook to ``codebook_dtype``. ``mask_coding``
        defaults to ``coding``."""
        if codebook_dtype not in CODEBOOK_DTYPES:
            raise ValueError(
                f"codebook dtype must be one of {', '.join(CODEBOOK_DTYPES)}, got '{codebook_dtype}'"
            )
        cb = codebook.detach().float()
        if codebook_dtype == "float16":
            cb = cb.half()
        elif codebook_dtype == "int8":
            if granularity == "group-scaled":
                raise ValueError("int8 codebooks need a per-codebook scale; group-scaled already has one")
            s = cb.abs().amax(dim=1, keepdim=True).clamp_min(1e-12) / 127
            cb, scale = torch.round(cb / s).clamp(-127, 127).to(torch.int8), s
        return cls(
            shape,
            codes=codes.reshape(-1).to(torch.uint8),
            codebook=cb,
            scale=scale,
            mask=None if mask is None else mask.reshape(-1).bool(),
            bits=bits,
            granularity=granularity,
            group_size=group_size,
            coding=coding,
            n_codes=codes.numel(),
            runtime=True,
            mask_coding=coding if mask_coding is None else mask_coding,
        )

    # -- decode -------------------------------------------------------------------------
    def float_codebook(self) -> torch.Tensor:
        """The codebook as float32 ``(n_codebooks, k)`` (an int8 codebook times its scale)."""
        cb = self.codebook
        if cb.dtype == torch.int8:
            assert self.scale is not None  # an int8 codebook always has its scale
            return cb.float() * self.scale
        return cb.float()

    def code_values(self) -> torch.Tensor:
        """uint8 codes, one per coded weight, in row-major order."""
        return from_container(self.codes, self.bits, self.n_codes)

    def _book_index(self, n_per_row: torch.Tensor | None) -> torch.Tensor | None:
        """Index of the codebook used by each coded weight (``None``: the single codebook)."""
        if self.granularity in ("tensor",):
            return None
        dev = self.codes.device
        if self.mask is None:
            pos = torch.arange(self.n_codes, device=dev, dtype=torch.int32)
        else:
            pos = self.mask.reshape(-1).nonzero().squeeze(1).to(torch.int32)
        if self.granularity == "channel":
            return pos // self.cols
        return pos // int(self.group_size or 1)

    def decode(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        if self.mask is None and self._rows_decodable() and not self.codebook.requires_grad:
            # row chunks: the only large allocation is the output itself
            return decode_in_row_chunks(self, dtype)
        codes = self.code_values().to(torch.int32)
        cb = self.float_codebook()
        k = cb.shape[1]
        if self.granularity == "tensor":
            vals = cb[0][codes]
        else:
            book = self._book_index(None)
            assert book is not None  # only the tensor granularity has a single codebook
            if self.granularity == "group-scaled":
                assert self.scale is not None
                vals = cb[0][codes] * self.scale.reshape(-1)[book]
            else:
                vals = cb.reshape(-1)[codes + book * k]
        if self.mask is None:
            out = vals
        else:
            out = torch.zeros(self.shape.numel(), dtype=vals.dtype, device=vals.device)
            out[self.mask.reshape(-1)] = vals
        return out.reshape(self.shape).to(dtype)

    def decode_rows(self, rows: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Decode only the given rows (an embedding lookup), ``(len(rows), cols)``."""
        if self.mask is not None or not self._rows_decodable():
            return self.decode(dtype).reshape(self.rows, self.cols)[rows]
        cols, k = self.cols, self.codebook.shape[1]
        codes = container_rows(self.codes, self.bits, self.rows, cols, rows)
        if codes is None:
            codes = self.code_values().reshape(self.rows, cols)[rows]
        codes = codes.to(torch.int32)
        cb = self.float_codebook()
        if self.granularity == "tensor":
            vals = cb[0][codes]
        elif self.granularity == "channel":
            vals = cb[rows].gather(1, codes.long())
        else:
            g = self.group_size or cols
            books = (
                rows.to(torch.int32).unsqueeze(1) * (cols // g)
                + torch.arange(cols, device=rows.device, dtype=torch.int32) // g
            )
            if self.granularity == "group-scaled":  # one shared codebook, a scale per group
                assert self.scale is not None
                vals = cb[0][codes] * self.scale.reshape(-1)[books].float()
            else:
                vals = cb.reshape(-1)[codes + books * k]
        return vals.to(dtype)

    def _rows_decodable(self) -> bool:
        """Rows decode on their own unless groups straddle rows (group-scaled only)."""
        return self.granularity != "group-scaled" or self.cols % int(self.group_size or self.cols) == 0

    # -- storage <-> memory -------------------------------------------------------------
    def meta(self) -> dict[str, Any]:
        return {
            "bits": self.bits,
            "granularity": self.granularity,
            "group_size": self.group_size,
            "coding": self.coding,
            "mask_coding": self.mask_coding,
            "n_codes": self.n_codes,
        }

    # -- checks at load (stored layout) ---------------------------------------------------
    meta_types: ClassVar[dict[str, tuple[str, ...]]] = {
        "bits": ("int",),
        "granularity": ("str",),
        "group_size": ("int", "none"),
        "coding": ("str",),
        "mask_coding": ("str",),
        "n_codes": ("int", "none"),
    }

    def _n_books(self) -> int:
        n, g = self.shape.numel(), self.group_size
        if self.granularity == "channel":
            return self.rows
        if self.granularity == "group":
            return n // int(g or 1)
        return 1  # tensor, group-scaled: one codebook

    def validate(self) -> None:
        check(1 <= self.bits <= 8, f"bits must be in 1..8, got {self.bits}")
        n, k = self.shape.numel(), 1 << self.bits
        g = self.group_size
        if self.granularity in ("group", "group-scaled"):
            check(g is not None and g > 0, f"'{self.granularity}' needs a positive group_size, got {g}")
            assert g is not None
            if self.granularity == "group":  # one codebook per run of g weights of a row
                check(self.cols % g == 0, f"group_size {g} does not divide the {self.cols} columns")
            else:
                check(n % g == 0, f"group_size {g} does not divide the {n} weights")
        n_books = self._n_books()
        cb = self.codebook
        check_field(cb, "codebook", (n_books, k), "float" if cb.dtype.is_floating_point else "int8")
        if self.granularity == "group-scaled":  # the per-group scale of one shared codebook
            check(cb.dtype != torch.int8, "a group-scaled codebook cannot be int8")
            check_field(self.scale, "scale", (n // int(g or 1), 1), "float")
        elif cb.dtype == torch.int8:  # an int8 codebook carries one scale per codebook
            check_field(self.scale, "scale", (n_books, 1), "float")
        else:
            check_field(self.scale, "scale", None, "float", required=False)
        check(0 <= self.n_codes <= n, f"n_codes {self.n_codes} is outside 0..{n}")
        if self.mask is None:
            check(self.n_codes == n, f"n_codes {self.n_codes} differs from the {n} weights (no mask)")
        elif self.mask_coding == "packed":
            check_field(self.mask, "mask", (packed_nbytes(n, 1),), "uint8")
        else:
            check_field(self.mask, "mask", (self.mask.numel(),), "uint8")
            check(self.mask.dim() == 1, "field 'mask' must be 1-D")
        if self.coding == "packed":
            check_field(self.codes, "codes", (packed_nbytes(self.n_codes, self.bits),), "uint8")
        else:
            check_field(self.codes, "codes", (self.codes.numel(),), "uint8")
            check(self.codes.dim() == 1, "field 'codes' must be 1-D")

    def validate_stored(self, stored: dict[str, torch.Tensor]) -> None:
        expect = {"codes": self.n_codes if self.coding == "zstd" else None}
        if self.mask_coding == "zstd":
            expect["mask"] = packed_nbytes(self.shape.numel(), 1)
        for name, size in expect.items():
            if size is None or name not in stored:
                continue
            check_zstd_size(stored[name], size, name)

    def validate_loaded(self) -> None:
        if self.mask is not None:
            kept = int(self.mask.sum())
            check(kept == self.n_codes, f"the mask keeps {kept} weights but n_codes is {self.n_codes}")

    def load_nbytes(self) -> int:
        other = [b for f, b in self.named_buffers() if f not in ("codes", "mask")]
        rest = sum(b.numel() * b.element_size() for b in other)
        mask = self.shape.numel() if self.mask is not None else 0  # one bool per weight
        return rest + mask + packed_nbytes(self.n_codes, container_bits(self.bits))

    def to_storage(self) -> dict[str, torch.Tensor]:
        """Codes as a ``bits``-bit stream (or its zstd coding), the mask as a 1-bit stream
        (or its zstd coding). Computed once per format (zstd level 19 is slow) and kept
        until ``invalidate``."""
        cached = self.__dict__.get("_stored")
        if cached is None:
            cached = super().to_storage()
            codes = self.code_values()
            packed = pack_bits(codes, self.bits)
            cached["codes"] = packed if self.coding == "packed" else zstd_encode(codes)
            if self.mask is not None:
                mask = pack_bits(self.mask.reshape(-1).to(torch.uint8), 1)
                cached["mask"] = mask if self.mask_coding == "packed" else zstd_encode(mask)
            self.__dict__["_stored"] = cached
        return dict(cached)

    def from_storage(self, stored: dict[str, torch.Tensor]) -> None:
        stored = dict(stored)
        if "codes" in stored:
            c = stored["codes"]
            if self.coding == "zstd":
                codes = zstd_decode(c, self.n_codes).to(c.device)
                stored["codes"] = to_container(codes, self.bits)
            elif container_bits(self.bits) != self.bits:
                stored["codes"] = stream_to_container(c.cpu(), self.bits, self.n_codes).to(c.device)
            # else: the stored stream is the in-memory layout already
        if "mask" in stored:
            m = stored["mask"]
            packed = m.cpu()
            if self.mask_coding == "zstd":
                packed = zstd_decode(packed, (self.shape.numel() + 7) // 8)
            stored["mask"] = unpack_bits(packed, 1, self.shape.numel()).bool().to(m.device)
        super().from_storage(stored)
