import pytest
import torch

from modelpress.formats import Codebook
from modelpress.primitives.kmeans import fit_kmeans


def _rows(w, granularity, g=8):
    if granularity == "tensor":
        return w.reshape(1, -1)
    if granularity == "channel":
        return w.reshape(w.shape[0], -1)
    return w.reshape(-1, g)


def _roundtrip(f: Codebook) -> Codebook:
    """What save / load do: the stored layout into an empty instance built from the manifest."""
    stored = f.to_storage()
    g = Codebook.from_manifest(f.to_manifest(), {k: (tuple(v.shape), v.dtype) for k, v in stored.items()})
    g.from_storage(stored)
    assert all(
        torch.equal(a, b) for a, b in zip(g.state_dict().values(), f.state_dict().values(), strict=True)
    )
    return g


@pytest.mark.parametrize("granularity", ["tensor", "channel", "group"])
@pytest.mark.parametrize("bits", [1, 3, 4, 5, 8])
@pytest.mark.parametrize("coding", ["packed", "zstd"])
def test_decode_is_exact_and_roundtrips(granularity, bits, coding):
    g = torch.Generator().manual_seed(bits)
    w = torch.randn(6, 2, 128, generator=g)  # conv-like: rows x (2*128)
    if 2**bits > _rows(w, granularity).shape[1]:
        pytest.skip("fewer weights per codebook than clusters")
    res = fit_kmeans(_rows(w, granularity), 2**bits)
    f = Codebook.from_codes(
        w.shape,
        res.codes,
        res.centroids,
        bits=bits,
        granularity=granularity,
        group_size=8 if granularity == "group" else None,
        coding=coding,
    )
    expected = res.centroids.gather(1, res.codes).reshape(w.shape)
    assert torch.equal(f.decode(), expected)  # codes/codebook decode exactly
    g2 = _roundtrip(f)
    assert torch.equal(g2.decode(), expected)
    rows = torch.tensor([5, 0, 2])
    assert torch.equal(f.decode_rows(rows), expected.reshape(6, -1)[rows])
    if coding == "packed":
        assert f.to_storage()["codes"].numel() == -(-w.numel() * bits // 8)
    assert f.stored_nbytes() == sum(t.numel() * t.element_size() for t in f.to_storage().values())


@pytest.mark.parametrize("dtype", ["float16", "int8"])
def test_small_codebook_dtypes(dtype):
    w = torch.randn(8, 64)
    res = fit_kmeans(w, 16)
    f = Codebook.from_codes(
        w.shape, res.codes, res.centroids, bits=4, granularity="channel", codebook_dtype=dtype
    )
    assert f.codebook.dtype == getattr(torch, dtype)
    assert (f.scale is not None) == (dtype == "int8")
    ref = res.centroids.gather(1, res.codes)
    assert (f.decode() - ref).abs().max() <= res.centroids.abs().max() / 127
    assert torch.equal(_roundtrip(f).decode(), f.decode())


def test_group_scaled_shared_codebook():
    w = torch.randn(4, 32) * torch.tensor([1.0, 10.0, 0.1, 3.0]).unsqueeze(1)
    scale = w.reshape(-1, 8).abs().amax(1, keepdim=True)
    res = fit_kmeans((w.reshape(-1, 8) / scale).reshape(1, -1), 16)
    f = Codebook.from_codes(
        w.shape, res.codes, res.centroids, bits=4, granularity="group-scaled", group_size=8, scale=scale
    )
    expected = (res.centroids[0][res.codes[0]].reshape(-1, 8) * scale).reshape(w.shape)
    torch.testing.assert_close(f.decode(), expected)
    assert torch.equal(_roundtrip(f).decode(), f.decode())


def test_mask_keeps_zeros_and_codes_only_kept_weights():
    w = torch.randn(10, 40)
    w[w.abs() < 0.7] = 0.0
    mask = w != 0
    res = fit_kmeans(w.reshape(1, -1), 8, weights=mask.reshape(1, -1).float())
    codes = res.codes.reshape(-1)[mask.reshape(-1)]
    f = Codebook.from_codes(w.shape, codes, res.centroids, bits=3, granularity="tensor", mask=mask)
    d = f.decode()
    # kept weights (|w| >= 0.7) sit in clusters that never straddle 0: exactly the pruned
    # positions decode to 0
    assert torch.equal(d == 0, ~mask)
    assert f.n_codes == int(mask.sum())
    stored = f.to_storage()
    assert stored["codes"].numel() == -(-int(mask.sum()) * 3 // 8)
    assert stored["mask"].numel() == -(-w.numel() // 8)
    assert f.state_dict()["mask"].dtype == torch.bool  # in memory: a bool tensor
    assert torch.equal(_roundtrip(f).decode(), d)


def test_entropy_coding_shrinks_skewed_codes():
    codes = torch.zeros(20000, dtype=torch.long)
    codes[::50] = torch.arange(400) % 16
    cb = torch.linspace(-1, 1, 16).unsqueeze(0)
    packed = Codebook.from_codes((100, 200), codes, cb, bits=4, granularity="tensor")
    zstd = Codebook.from_codes((100, 200), codes, cb, bits=4, granularity="tensor", coding="zstd")
    assert zstd.stored_nbytes() < packed.stored_nbytes() / 4
    assert torch.equal(_roundtrip(zstd).decode(), packed.decode())
