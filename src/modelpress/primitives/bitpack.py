"""Bit packing: ``pack_bits / unpack_bits`` for codes of any width 1..8.

Codes are written as one little-endian bit stream: code ``i`` occupies bits
``[i*b, (i+1)*b)`` of the stream, least significant bit first, so ``n`` codes of ``b`` bits
take exactly ``ceil(n*b/8)`` bytes. For ``b`` in {1, 2, 4, 8} this is the usual
"several codes per byte, low bits first" layout.
"""

from __future__ import annotations

import torch

__all__ = [
    "container_bits",
    "container_rows",
    "from_container",
    "pack_bits",
    "packed_nbytes",
    "stream_to_container",
    "to_container",
    "unpack_bits",
]


def packed_nbytes(n: int, bits: int) -> int:
    return (n * bits + 7) // 8


def _check_bits(bits: int) -> None:
    if not isinstance(bits, int) or not 1 <= bits <= 8:
        raise ValueError(f"bits must be an integer in 1..8, got {bits!r}")


def pack_bits(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack integer codes in ``[0, 2**bits)`` (any shape, read flat) into uint8 bytes."""
    _check_bits(bits)
    flat = codes.reshape(-1)
    if flat.numel() and (int(flat.min()) < 0 or int(flat.max()) >= 2**bits):
        raise ValueError(f"codes must lie in [0, {2**bits}) to pack into {bits} bits")
    n = flat.numel()
    if bits == 8:
        return flat.to(torch.uint8).clone()
    c = flat.to(torch.uint8)
    if 8 % bits == 0:  # whole codes per byte: shift and add, no bit expansion
        per = 8 // bits
        c = torch.cat([c, c.new_zeros((-n) % per)]).reshape(-1, per)
        out = c[:, 0].clone()
        for i in range(1, per):
            out |= c[:, i] << (i * bits)
        return out
    # general widths (3, 5, 6, 7): expand to bits, regroup by 8. Chunks of 8 codes make a
    # whole number of bytes, so the stream is built chunk by chunk in bounded memory.
    out = torch.empty(packed_nbytes(n, bits), dtype=torch.uint8, device=flat.device)
    shifts = torch.arange(bits, device=c.device, dtype=torch.uint8)
    weights = (1 << torch.arange(8, device=c.device, dtype=torch.int32)).to(torch.uint8)
    step = 8 * 16384
    for s in range(0, n, step):
        part = flat[s : s + step].to(torch.uint8)
        b = ((part.unsqueeze(1) >> shifts) & 1).reshape(-1)  # (len * bits,) uint8 bits
        b = torch.cat([b, b.new_zeros((-b.numel()) % 8)]).reshape(-1, 8)
        first = s * bits // 8
        out[first : first + b.shape[0]] = (b * weights).sum(1, dtype=torch.int32)
    return out


def unpack_bits(packed: torch.Tensor, bits: int, n: int) -> torch.Tensor:
    """Inverse of ``pack_bits``: the first ``n`` codes as uint8."""
    _check_bits(bits)
    if packed.dtype != torch.uint8:
        raise ValueError(f"packed codes must be uint8, got {packed.dtype}")
    if packed.numel() < packed_nbytes(n, bits):
        raise ValueError(f"{packed.numel()} bytes cannot hold {n} codes of {bits} bits")
    if bits == 8:
        return packed[:n].clone()
    if 8 % bits == 0:
        shifts = torch.arange(0, 8, bits, device=packed.device, dtype=torch.uint8)
        return ((packed.unsqueeze(1) >> shifts) & (2**bits - 1)).reshape(-1)[:n]
    # general widths: 8 codes span exactly `bits` bytes, so decode in chunks of whole bytes
    # The output is allocated once and filled chunk by chunk: appending small per-chunk
    # results between large freed temporaries fragmented glibc's heap (measured: +390 MB
    # peak RSS unpacking SmolLM2's 28M-code embedding).
    out = torch.empty(n, dtype=torch.uint8, device=packed.device)
    bit_shifts = torch.arange(8, device=packed.device, dtype=torch.uint8)
    weights = (1 << torch.arange(bits, device=packed.device, dtype=torch.int32)).to(torch.uint8)
    step = bits * 16384  # bytes per chunk = 8 * 16384 codes (small temporaries)
    nbytes = packed_nbytes(n, bits)
    for s in range(0, nbytes, step):
        part = packed[s : min(s + step, nbytes)]
        b = ((part.unsqueeze(1) >> bit_shifts) & 1).reshape(-1)
        first = (s * 8) // bits
        m = min(n - first, b.numel() // bits)
        b = b[: m * bits].reshape(m, bits)
        out[first : first + m] = (b * weights).sum(1, dtype=torch.int32)
    return out


# -- in-memory containers -----------------------------------------------------------------
# Codes live in memory in the narrowest width among 1, 2, 4, 8 bits that holds them, so a
# row of codes starts on a byte boundary (when the row length allows) and decodes with
# shifts alone. For 1, 2, 4 and 8 bits this is exactly the on-disk stream (no conversion at
# load); 3-bit codes sit in nibbles, 5- to 7-bit codes in bytes.


def container_bits(bits: int) -> int:
    _check_bits(bits)
    return next(c for c in (1, 2, 4, 8) if c >= bits)


def to_container(codes: torch.Tensor, bits: int) -> torch.Tensor:
    return pack_bits(codes, container_bits(bits))


def stream_to_container(packed: torch.Tensor, bits: int, n: int) -> torch.Tensor:
    """The in-memory container of ``n`` codes stored ``bits`` wide, built in bounded memory.

    Equal to ``to_container(unpack_bits(packed, bits, n), bits)`` but converts 8 × 16384
    codes at a time into a preallocated output, so loading a large 3-bit matrix does not
    hold its codes as whole-matrix uint8 temporaries.
    """
    cb = container_bits(bits)
    if cb == bits:
        return packed[: packed_nbytes(n, bits)].clone()
    out = torch.empty(packed_nbytes(n, cb), dtype=torch.uint8, device=packed.device)
    chunk = 8 * 16384  # codes: a whole number of bytes in both widths
    for first in range(0, n, chunk):
        m = min(chunk, n - first)
        part = packed[first * bits // 8 : first * bits // 8 + packed_nbytes(m, bits)]
        o = first * cb // 8
        out[o : o + packed_nbytes(m, cb)] = pack_bits(unpack_bits(part, bits, m), cb)
    return out


def from_container(rt: torch.Tensor, bits: int, n: int) -> torch.Tensor:
    return unpack_bits(rt, container_bits(bits), n)


def container_rows(
    rt: torch.Tensor, bits: int, n_rows: int, cols: int, rows: torch.Tensor
) -> torch.Tensor | None:
    """uint8 codes ``(len(rows), cols)`` of selected rows, or None if rows don't start on bytes."""
    cb = container_bits(bits)
    per = 8 // cb
    if cols % per:
        return None
    packed = rt[: n_rows * cols // per].reshape(n_rows, cols // per)[rows]
    shifts = torch.arange(0, 8, cb, device=rt.device, dtype=torch.uint8)
    return ((packed.unsqueeze(-1) >> shifts) & (2**cb - 1)).reshape(rows.shape[0], cols)
