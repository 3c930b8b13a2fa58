import torch

from modelpress.formats import FORMATS, AffineQuantized


def test_encode_decode_and_fields():
    torch.manual_seed(0)
    w = torch.randn(8, 16)
    f = AffineQuantized.encode(w)
    assert FORMATS.get("affine") is AffineQuantized
    assert f.qdata.dtype == torch.int8 and f.qdata.shape == (8, 16) and f.scale.shape == (8, 1)
    assert f.zero_point is None and f.symmetric
    assert f.nbytes() == 8 * 16 + 8 * 4
    assert dict(f.state_dict()).keys() == {"qdata", "scale"}
    err = (f.decode() - w).abs()
    assert (err <= f.scale / 2 + 1e-6).all()
    assert "qdata=(8, 16):int8" in repr(f) and "scale=(8, 1):float32" in repr(f) and "bits=8" in repr(f)


def test_manifest_roundtrip_builds_empty_instance():
    f = AffineQuantized.encode(torch.randn(4, 32), 8, symmetric=False, group_size=16)
    entry = f.to_manifest()
    assert entry == {
        "format": "affine",
        "version": 1,
        "shape": [4, 32],
        "meta": {"bits": 8, "group_size": 16},
    }
    specs = {k: (tuple(v.shape), v.dtype) for k, v in f.to_storage().items()}
    g = AffineQuantized.from_manifest(entry, specs)
    assert g.qdata.is_meta and g.zero_point is not None and g.group_size == 16
    g.from_storage(f.to_storage())
    assert torch.equal(g.decode(), f.decode())


def test_low_bit_storage_is_a_tight_stream_and_state_dict_is_memory_layout():
    torch.manual_seed(0)
    w = torch.randn(6, 40)
    for bits in (2, 3, 4):
        f = AffineQuantized.encode(w, bits, group_size=8)
        stored = f.to_storage()
        assert stored["qdata"].numel() == -(-w.numel() * bits // 8)
        assert f.state_dict()["qdata"].shape == f.qdata.shape  # state_dict: what is in memory
        g = AffineQuantized.from_manifest(f.to_manifest(), {k: (v.shape, v.dtype) for k, v in stored.items()})
        g.from_storage(stored)
        assert torch.equal(g.int_values(), f.int_values()) and torch.equal(g.decode(), f.decode())
        assert f.stored_nbytes() == sum(t.numel() * t.element_size() for t in stored.values())
