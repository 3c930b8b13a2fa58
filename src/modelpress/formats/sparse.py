"""Unstructured sparse format: ``values, index``.

Only the kept weights are stored (``values``, in row-major order, in the weight's own
dtype), plus a compact index of where they sit in the flattened weight:

- ``bitmask``: one bit per weight (``primitives.bitpack.pack_bits`` with 1 bit), ``n/8``
  bytes. A 50 %-pruned fp32 weight costs ``n/2 * 4 + n/8`` bytes, i.e. 50 % + 1/32 of dense.
- ``relative4`` / ``relative8``: Deep Compression's relative indices (Han et al., arXiv
  1510.00149, section 2): each stored value carries the gap to the previous one in ``b``
  bits (code = gap - 1); a gap longer than ``2**b`` is bridged by *filler* entries of
  value 0 at every ``2**b`` positions. Cheaper than a bitmask at high sparsity.

``SparseTensor.encode`` picks, per tensor, whichever index is smallest. The stored fields are
also the in-memory layout (no rebuild at load); ``decode`` scatters the values into a dense
zero tensor. Embedding rows decode on their own with a bitmask (``decode_rows``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import torch

from ..primitives.bitpack import pack_bits, packed_nbytes, unpack_bits
from .base import CompressedTensor, check, check_field, register_format

__all__ = ["INDEX_KINDS", "SparseTensor", "relative_index"]

INDEX_KINDS = ("bitmask", "relative4", "relative8")


def relative_index(mask: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Relative-index encoding of the flat ``mask``: ``(entry, codes)`` where ``entry[i]`` is
    the index of the kept weight stored at slot ``i`` or ``-1`` for a filler zero, and
    ``codes[i] = gap - 1`` in ``[0, 2**bits)`` (the gap to the previous slot's position)."""
    span = 1 << bits
    pos = mask.reshape(-1).nonzero().squeeze(1)  # (k,) positions of kept weights
    prev = torch.cat([pos.new_full((1,), -1), pos[:-1]])
    gap = pos - prev  # (k,) >= 1
    fillers = (gap - 1) // span  # (k,) filler slots needed before each kept weight
    reps = fillers + 1
    total = int(reps.sum())
    owner = torch.repeat_interleave(torch.arange(pos.numel(), device=pos.device), reps)  # (total,)
    first = torch.cumsum(reps, 0) - reps  # (k,) first slot of each kept weight's run
    is_last = torch.arange(total, device=pos.device) - first[owner] == reps[owner] - 1
    codes = torch.where(is_last, gap[owner] - fillers[owner] * span - 1, torch.full_like(owner, span - 1))
    entry = torch.where(is_last, owner, torch.full_like(owner, -1))
    return entry, codes.to(torch.uint8)


@register_format
class SparseTensor(CompressedTensor):
    format_name = "sparse"
    format_version = 1
    fields = ("values", "index")
    values: torch.Tensor
    index: torch.Tensor

    def __init__(
        self,
        shape: Sequence[int],
        *,
        values: torch.Tensor,
        index: torch.Tensor,
        index_kind: str = "bitmask",
        n_values: int | None = None,
    ) -> None:
        """``values``: ``(n_values,)`` stored values; ``index``: uint8 packed bitmask
        (``ceil(n/8)`` bytes) or packed relative codes (``ceil(n_values*b/8)`` bytes)."""
        super().__init__(shape, values=values, index=index)
        if index_kind not in INDEX_KINDS:
            raise ValueError(f"unknown sparse index '{index_kind}' (known: {', '.join(INDEX_KINDS)})")
        self.index_kind = index_kind
        self.n_values = int(values.shape[0]) if n_values is None else int(n_values)
        self.rows = int(self.shape[0])
        self.cols = int(self.shape.numel() // max(1, self.rows))

    # -- construction -------------------------------------------------------------------
    @classmethod
    def encode(
        cls, w: torch.Tensor, mask: torch.Tensor | None = None, *, index: str = "auto"
    ) -> SparseTensor:
        """Store the weights of ``w`` where ``mask`` is True (default: ``w != 0``); the
        pruned positions decode to exactly 0. ``index``: one of ``INDEX_KINDS`` or ``auto``
        (the smallest for this tensor)."""
        w = w.detach()
        mask = (w != 0) if mask is None else mask.to(torch.bool)
        if mask.shape != w.shape:
            raise ValueError(f"mask of shape {tuple(mask.shape)} for a weight of shape {tuple(w.shape)}")
        flat_w, flat_m = w.reshape(-1), mask.reshape(-1)
        candidates = INDEX_KINDS if index == "auto" else (index,)
        if index != "auto" and index not in INDEX_KINDS:
            raise ValueError(f"unknown sparse index '{index}' (known: auto, {', '.join(INDEX_KINDS)})")
        best: SparseTensor | None = None
        for kind in candidates:
            if kind == "bitmask":
                vals, idx = flat_w[flat_m].clone(), pack_bits(flat_m.to(torch.uint8), 1)
            else:
                bits = int(kind.removeprefix("relative"))
                entry, codes = relative_index(flat_m, bits)
                kept = flat_w[flat_m]
                vals = torch.where(entry >= 0, kept[entry.clamp_min(0)], kept.new_zeros(()))
                idx = pack_bits(codes, bits)
            cand = cls(w.shape, values=vals.contiguous(), index=idx, index_kind=kind)
            if best is None or cand.nbytes() < best.nbytes():
                best = cand
        assert best is not None
        return best

    # -- decode -------------------------------------------------------------------------
    @property
    def dtype(self) -> torch.dtype:
        return self.values.dtype

    def positions(self) -> torch.Tensor:
        """Flat positions of the stored values, ``(n_values,)`` int64."""
        n = self.shape.numel()
        if self.index_kind == "bitmask":
            return unpack_bits(self.index, 1, n).bool().nonzero().squeeze(1)
        bits = int(self.index_kind.removeprefix("relative"))
        gaps = unpack_bits(self.index, bits, self.n_values).long() + 1
        return torch.cumsum(gaps, 0) - 1

    def mask(self) -> torch.Tensor:
        """Boolean mask of the stored positions (with relative indices, filler slots too)."""
        if self.index_kind == "bitmask":
            return unpack_bits(self.index, 1, self.shape.numel()).bool().reshape(self.shape)
        out = torch.zeros(self.shape.numel(), dtype=torch.bool, device=self.index.device)
        out[self.positions()] = True
        return out.reshape(self.shape)

    def decode(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        vals = self.values if dtype is None else self.values.to(dtype)
        out = torch.zeros(self.shape.numel(), dtype=vals.dtype, device=vals.device)  # (n,)
        if self.index_kind == "bitmask":
            out[unpack_bits(self.index, 1, self.shape.numel()).bool()] = vals
        else:
            out[self.positions()] = vals
        return out.reshape(self.shape)

    def _row_offsets(self) -> torch.Tensor:
        """``(rows + 1,)`` start of each row's values (bitmask only), kept until ``invalidate``."""
        offsets = self.__dict__.get("_derived")
        if offsets is None:
            m = unpack_bits(self.index, 1, self.shape.numel()).reshape(self.rows, self.cols)
            counts = m.sum(1, dtype=torch.int64)
            offsets = torch.cat([counts.new_zeros(1), torch.cumsum(counts, 0)])
            self.__dict__["_derived"] = offsets
        return offsets

    def decode_rows(self, rows: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
        """Only the given rows, ``(len(rows), cols)`` (an embedding lookup)."""
        if self.index_kind != "bitmask" or self.cols % 8:
            return self.decode(dtype).reshape(self.rows, self.cols)[rows]
        vals = self.values if dtype is None else self.values.to(dtype)
        rows = rows.long()
        packed = self.index.reshape(self.rows, self.cols // 8)[rows]  # (r, cols/8)
        m = unpack_bits(packed.reshape(-1), 1, rows.numel() * self.cols).bool().reshape(-1, self.cols)
        # value slot of each kept weight: its row's offset + its rank within the row
        slot = self._row_offsets()[rows].unsqueeze(1) + torch.cumsum(m, 1) - 1  # (r, cols)
        out = torch.zeros(rows.numel(), self.cols, dtype=vals.dtype, device=vals.device)
        out[m] = vals[slot[m]]
        return out

    # -- storage ------------------------------------------------------------------------
    def meta(self) -> dict[str, Any]:
        return {"index_kind": self.index_kind, "n_values": self.n_values}

    # -- checks at load (stored layout) ---------------------------------------------------
    meta_types: ClassVar[dict[str, tuple[str, ...]]] = {"index_kind": ("str",), "n_values": ("int", "none")}

    def validate(self) -> None:
        n = self.shape.numel()
        if self.index_kind == "bitmask":
            check(0 <= self.n_values <= n, f"n_values {self.n_values} is outside 0..{n}")
            index_len = packed_nbytes(n, 1)
        else:
            bits = int(self.index_kind.removeprefix("relative"))
            most = n + n // (1 << bits) + 1  # kept weights + fillers bridging long gaps
            check(0 <= self.n_values <= most, f"n_values {self.n_values} is outside 0..{most}")
            index_len = packed_nbytes(self.n_values, bits)
        check_field(self.values, "values", (self.n_values,), "float")
        check_field(self.index, "index", (index_len,), "uint8")

    def validate_loaded(self) -> None:
        n = self.shape.numel()
        if self.index_kind == "bitmask":
            kept = int(unpack_bits(self.index, 1, n).sum())
            check(kept == self.n_values, f"the bitmask keeps {kept} weights but n_values is {self.n_values}")
        elif self.n_values:
            last = int(self.positions()[-1])
            check(last < n, f"the relative index reaches position {last}, past the {n} weights")

    def extra_repr(self) -> str:
        density = self.n_values / max(1, self.shape.numel())
        return super().extra_repr() + f", stored={density:.1%}"
