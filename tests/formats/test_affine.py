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
    assert "affine" not in repr(f) or "qdata" in repr(f)


def test_manifest_roundtrip_builds_empty_instance():
    f = AffineQuantized.encode(torch.randn(4, 32), 8, symmetric=False, group_size=16)
    entry = f.to_manifest()
    assert entry == {
        "format": "affine",
        "version": 1,
        "shape": [4, 32],
        "meta": {"bits": 8, "group_size": 16},
    }
    specs = {k: (tuple(v.shape), v.dtype) for k, v in f.state_dict().items()}
    g = AffineQuantized.from_manifest(entry, specs)
    assert g.qdata.is_meta and g.zero_point is not None and g.group_size == 16
    g.load_state_dict(f.state_dict(), assign=True)
    assert torch.equal(g.decode(), f.decode())
