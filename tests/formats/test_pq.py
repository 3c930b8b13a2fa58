"""Product-quantization format (formats/pq.py)."""

from __future__ import annotations

import json

import pytest
import torch

from modelpress.errors import ArtifactError
from modelpress.formats import FORMATS, ProductQuantized


def _pq(
    shape, bits, dim, seed=0, cb_dtype=torch.float32
) -> tuple[ProductQuantized, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    n_codes = torch.Size(shape).numel() // dim
    codes = torch.randint(0, 2**bits, (n_codes,), generator=g, dtype=torch.uint8)
    cb = torch.randn(2**bits, dim, generator=g).to(cb_dtype)
    return ProductQuantized(shape, codes=codes, codebook=cb, bits=bits, dim=dim), codes, cb


def _slow_decode(shape, codes, cb, dim) -> torch.Tensor:
    """Row by row, sub-vector by sub-vector."""
    rows = shape[0]
    cols = torch.Size(shape).numel() // rows
    out = torch.empty(rows, cols)
    per_row = cols // dim
    for r in range(rows):
        for j in range(per_row):
            out[r, j * dim : (j + 1) * dim] = cb[int(codes[r * per_row + j])].float()
    return out.reshape(shape)


def _reload(f: ProductQuantized) -> ProductQuantized:
    stored = {k: v.clone() for k, v in f.to_storage().items()}
    entry = json.loads(json.dumps(f.to_manifest()))
    g = FORMATS.get(entry["format"]).from_manifest(
        entry, {k: (tuple(v.shape), v.dtype) for k, v in stored.items()}
    )
    g.from_storage(stored)
    return g


@pytest.mark.parametrize(
    ("shape", "bits", "dim"),
    [
        ((7, 40), 4, 4),
        ((13, 24), 3, 3),
        ((5, 30), 5, 6),
        ((6, 3, 3, 3), 2, 9),
        ((3, 8), 8, 8),
        ((4, 6), 1, 2),
    ],
)
def test_decode_equals_codebook_of_codes(shape, bits, dim):
    f, codes, cb = _pq(shape, bits, dim)
    expected = cb[codes.long()].reshape(shape)
    assert torch.equal(f.decode(), expected)
    assert torch.equal(f.decode(), _slow_decode(shape, codes, cb, dim))
    assert f.decode().dtype == torch.float32
    assert torch.equal(f.decode(torch.float16), expected.half())
    rows = torch.tensor([shape[0] - 1, 0, 1, 0])
    flat = expected.reshape(shape[0], -1)
    assert torch.equal(f.decode_rows(rows), flat[rows])
    assert torch.equal(f.decode_rows(torch.tensor([2])), flat[2:3])
    assert f.decode_rows(torch.tensor([], dtype=torch.long)).shape == (0, flat.shape[1])


def test_float16_codebook_decodes_to_float32():
    f, codes, cb = _pq((7, 40), 4, 4, cb_dtype=torch.float16)
    assert f.decode().dtype == torch.float32
    assert torch.equal(f.decode(), cb.float()[codes.long()].reshape(7, 40))
    assert torch.equal(_reload(f).decode(), f.decode())
    assert _reload(f).codebook.dtype == torch.float16


@pytest.mark.parametrize("bits", [1, 2, 3, 4, 5, 6, 7, 8])
@pytest.mark.parametrize(("shape", "dim"), [((7, 40), 4), ((13, 24), 3), ((5, 6), 6)])
def test_storage_round_trip_is_exact_and_tight(bits, shape, dim):
    f, codes, cb = _pq(shape, bits, dim, seed=bits)
    stored = f.to_storage()
    n_codes = f.n_codes
    assert n_codes == torch.Size(shape).numel() // dim
    assert stored["codes"].dtype == torch.uint8
    assert stored["codes"].numel() == -(-n_codes * bits // 8)  # ceil(n_codes * bits / 8)
    assert torch.equal(stored["codebook"], cb)
    assert f.stored_nbytes() == -(-n_codes * bits // 8) + cb.numel() * cb.element_size()
    g = _reload(f)
    assert g.meta() == {"bits": bits, "dim": dim}
    assert torch.equal(g.decode(), f.decode())
    assert torch.equal(g.codes, codes)  # one byte per code in memory, as built
    for k, v in f.state_dict().items():
        assert torch.equal(g.state_dict()[k], v)
    assert g.stored_nbytes() == f.stored_nbytes()


def test_in_memory_layout_is_one_byte_per_code():
    f, _, _ = _pq((13, 24), 3, 3)
    sd = f.state_dict()
    assert set(sd) == {"codes", "codebook"}
    assert sd["codes"].shape == (104,) and sd["codes"].dtype == torch.uint8
    assert f.nbytes() == 104 + 8 * 3 * 4


@pytest.mark.parametrize(("shape", "dim"), [((7, 40), 3), ((5, 30), 7), ((6, 3, 3, 3), 2), ((4, 5), 10)])
def test_sub_vector_not_dividing_the_row_is_a_value_error(shape, dim):
    n = torch.Size(shape).numel()
    with pytest.raises(ValueError, match=f"sub-vector size {dim} does not divide the row length"):
        ProductQuantized(
            shape,
            codes=torch.zeros(n // dim, dtype=torch.uint8),
            codebook=torch.zeros(4, dim),
            bits=2,
            dim=dim,
        )


def test_manifest_version_and_missing_field():
    f, _, _ = _pq((7, 40), 4, 4)
    specs = {k: (tuple(v.shape), v.dtype) for k, v in f.to_storage().items()}
    with pytest.raises(ArtifactError, match="version 2 is not supported"):
        ProductQuantized.from_manifest({**f.to_manifest(), "version": 2}, specs)
    with pytest.raises(ArtifactError, match="missing field"):
        ProductQuantized.from_manifest(f.to_manifest(), {"codes": specs["codes"]})


def test_truncated_codes_are_a_value_error():
    f, _, _ = _pq((7, 40), 4, 4)
    stored = f.to_storage()
    g = ProductQuantized.from_manifest(
        f.to_manifest(), {k: (tuple(v.shape), v.dtype) for k, v in stored.items()}
    )
    with pytest.raises(ValueError, match="cannot hold"):
        g.from_storage({**stored, "codes": stored["codes"][:-1]})
