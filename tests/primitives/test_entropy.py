"""zstd entropy coding of byte streams (primitives/entropy.py)."""

from __future__ import annotations

import pytest
import torch

from modelpress.primitives.entropy import ZSTD_LEVEL, zstd_decode, zstd_encode


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _random(n: int = 5000) -> torch.Tensor:
    return torch.randint(0, 256, (n,), generator=_gen(), dtype=torch.uint8)


def _skewed(n: int = 5000) -> torch.Tensor:
    # 2-bit codes, mostly 0: the distribution k-means codes of a pruned layer have
    p = torch.tensor([0.85, 0.1, 0.04, 0.01])
    return torch.multinomial(p, n, replacement=True, generator=_gen(1)).to(torch.uint8)


@pytest.mark.parametrize("data", [_random(), _skewed(), _random(1), torch.zeros(3000, dtype=torch.uint8)])
def test_round_trip_is_exact(data):
    blob = zstd_encode(data)
    assert blob.dtype == torch.uint8 and blob.dim() == 1
    out = zstd_decode(blob, data.numel())
    assert out.dtype == torch.uint8 and torch.equal(out, data)
    assert torch.equal(zstd_decode(blob), data)  # the length is in the frame header


def test_skewed_bytes_compress_near_their_entropy():
    data = _skewed(20000)
    p = torch.bincount(data.long(), minlength=4).double() / data.numel()
    entropy_bits = float(-(p[p > 0] * p[p > 0].log2()).sum()) * data.numel()  # ~0.78 bit/code
    blob = zstd_encode(data)
    assert blob.numel() * 8 < 1.5 * entropy_bits  # measured 1.31x the order-0 entropy
    assert blob.numel() < 0.6 * (data.numel() * 2 // 8)  # well below 2-bit packing
    assert zstd_encode(_random(20000)).numel() >= 20000  # random bytes do not compress


def test_any_dtype_any_shape_is_coded_as_its_bytes():
    x = torch.randn(3, 5, generator=_gen())
    blob = zstd_encode(x)
    raw = zstd_decode(blob, x.numel() * 4)
    assert torch.equal(raw.view(torch.float32).reshape(3, 5), x)
    # a non-contiguous view codes the bytes of its values in logical order
    t = torch.arange(12, dtype=torch.uint8).reshape(3, 4).t()
    assert torch.equal(zstd_decode(zstd_encode(t)), t.reshape(-1))


def test_encoding_is_deterministic_at_the_artifact_level():
    data = _skewed()
    assert ZSTD_LEVEL == 19  # saved artifacts were written at this level
    assert torch.equal(zstd_encode(data), zstd_encode(data))
    assert torch.equal(zstd_encode(data), zstd_encode(data, level=ZSTD_LEVEL))
    assert zstd_encode(data, level=1).numel() >= zstd_encode(data).numel()


def test_decoded_tensor_owns_its_memory():
    blob = zstd_encode(_random(100))
    out = zstd_decode(blob)
    out[0] ^= 0xFF  # writable, and does not touch the blob
    assert torch.equal(zstd_decode(blob), _random(100))


def test_empty_input_round_trips():
    blob = zstd_encode(torch.empty(0, dtype=torch.uint8))
    assert blob.numel() > 0  # a frame header still
    out = zstd_decode(blob, 0)
    assert out.dtype == torch.uint8 and out.numel() == 0


def test_empty_input_encodes():
    blob = zstd_encode(torch.empty(0, dtype=torch.uint8))
    assert blob.dtype == torch.uint8 and 0 < blob.numel() < 32


@pytest.mark.parametrize("n_bytes", [4999, 5001, 1, 0])
def test_wrong_length_is_a_value_error(n_bytes):
    blob = zstd_encode(_skewed())
    with pytest.raises(ValueError, match=r"zstd stream|corrupt"):
        zstd_decode(blob, n_bytes)


def test_truncated_stream_is_a_value_error():
    blob = zstd_encode(_skewed())
    for cut in (blob.numel() - 1, blob.numel() // 2, 6, 1):
        with pytest.raises(ValueError, match="corrupt zstd stream"):
            zstd_decode(blob[:cut], 5000)


@pytest.mark.parametrize("where", ["magic", "header", "tail"])
def test_corrupted_stream_is_a_value_error(where):
    blob = zstd_encode(_skewed())
    pos = {"magic": 0, "header": 4, "tail": blob.numel() - 3}[where]
    bad = blob.clone()
    bad[pos] ^= 0xFF
    with pytest.raises(ValueError, match="corrupt zstd stream"):
        zstd_decode(bad, 5000)


def test_garbage_and_empty_blob_are_value_errors():
    with pytest.raises(ValueError, match="corrupt zstd stream"):
        zstd_decode(_random(64))
    with pytest.raises(ValueError, match="corrupt zstd stream"):
        zstd_decode(torch.empty(0, dtype=torch.uint8))
