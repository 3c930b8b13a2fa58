"""Entropy coding of byte streams: zstd (Huffman + FSE stages) at its strongest level.

Used by formats that entropy-code their codes or masks (``formats.codebook``). Level 19 is
what every artifact was written with: changing it changes the bytes of saved files.
"""

from __future__ import annotations

import torch

__all__ = ["ZSTD_LEVEL", "zstd_decode", "zstd_encode"]

ZSTD_LEVEL = 19


def zstd_encode(data: torch.Tensor, level: int = ZSTD_LEVEL) -> torch.Tensor:
    """The uint8 bytes of ``data`` (any dtype, contiguous on the CPU after the copy)
    zstd-compressed: a 1-D uint8 tensor."""
    import zstandard

    raw = data.detach().cpu().contiguous().numpy().tobytes()
    blob = zstandard.ZstdCompressor(level=level).compress(raw)
    return _as_tensor(blob)


def _as_tensor(data: bytes) -> torch.Tensor:
    if not data:  # torch.frombuffer refuses an empty buffer
        return torch.empty(0, dtype=torch.uint8)
    return torch.frombuffer(bytearray(data), dtype=torch.uint8).clone()


def zstd_decode(blob: torch.Tensor, n_bytes: int | None = None) -> torch.Tensor:
    """Inverse of ``zstd_encode``: the original bytes as a 1-D uint8 tensor. With
    ``n_bytes`` set, a stream that decodes to another length is a ``ValueError``."""
    import zstandard

    try:
        raw = zstandard.ZstdDecompressor().decompress(
            blob.detach().cpu().contiguous().numpy().tobytes(),
            max_output_size=n_bytes or 0,
        )
    except zstandard.ZstdError as e:
        raise ValueError(f"corrupt zstd stream: {e}") from None
    if n_bytes is not None and len(raw) != n_bytes:
        raise ValueError(f"zstd stream decodes to {len(raw)} bytes, expected {n_bytes}")
    return _as_tensor(raw)
