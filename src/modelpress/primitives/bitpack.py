"""Bit packing: ``pack_bits / unpack_bits`` for codes of any width 1..8.

Codes are written as one little-endian bit stream: code ``i`` occupies bits
``[i*b, (i+1)*b)`` of the stream, least significant bit first, so ``n`` codes of ``b`` bits
take exactly ``ceil(n*b/8)`` bytes. For ``b`` in {1, 2, 4, 8} this is the usual
"several codes per byte, low bits first" layout.
"""

from __future__ import annotations

import torch

__all__ = ["pack_bits", "packed_nbytes", "unpack_bits"]


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
    c = flat.to(torch.int32)
    if 8 % bits == 0:  # whole codes per byte: shift and add, no bit expansion
        per = 8 // bits
        pad = (-n) % per
        c = torch.cat([c, c.new_zeros(pad)]).reshape(-1, per)
        shifts = torch.arange(0, 8, bits, device=c.device, dtype=torch.int32)
        return (c << shifts).sum(1).to(torch.uint8)
    # general widths (3, 5, 6, 7): expand to bits, regroup by 8
    b = (c.unsqueeze(1) >> torch.arange(bits, device=c.device, dtype=torch.int32)) & 1  # (n, bits)
    b = b.reshape(-1)
    b = torch.cat([b, b.new_zeros((-b.numel()) % 8)]).reshape(-1, 8)
    weights = 1 << torch.arange(8, device=c.device, dtype=torch.int32)
    return (b * weights).sum(1).to(torch.uint8)


def unpack_bits(packed: torch.Tensor, bits: int, n: int) -> torch.Tensor:
    """Inverse of ``pack_bits``: the first ``n`` codes as uint8."""
    _check_bits(bits)
    if packed.dtype != torch.uint8:
        raise ValueError(f"packed codes must be uint8, got {packed.dtype}")
    if packed.numel() < packed_nbytes(n, bits):
        raise ValueError(f"{packed.numel()} bytes cannot hold {n} codes of {bits} bits")
    if bits == 8:
        return packed[:n].clone()
    p = packed.to(torch.int32)
    if 8 % bits == 0:
        shifts = torch.arange(0, 8, bits, device=p.device, dtype=torch.int32)
        out = (p.unsqueeze(1) >> shifts) & (2**bits - 1)
        return out.reshape(-1)[:n].to(torch.uint8)
    b = (p.unsqueeze(1) >> torch.arange(8, device=p.device, dtype=torch.int32)) & 1
    b = b.reshape(-1)[: n * bits].reshape(n, bits)
    weights = 1 << torch.arange(bits, device=p.device, dtype=torch.int32)
    return (b * weights).sum(1).to(torch.uint8)
