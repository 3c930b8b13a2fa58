"""The binary and ternary formats: exact packings at odd lengths (1 bit, 2 bits, 5 trits per
byte), the tight stored sizes, and metadata that does not fit the stored tensors."""

from __future__ import annotations

import json

import pytest
import torch

from modelpress.errors import ArtifactError
from modelpress.formats import FORMATS, BinaryTensor, TernaryTensor
from modelpress.formats.binary import (
    best_packing,
    pack_base3,
    pack_ternary,
    unpack_base3,
    unpack_ternary,
)
from modelpress.primitives.bitpack import pack_bits, unpack_bits

ODD = [1, 3, 4, 5, 7, 9, 31, 33, 127, 1001]


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("n", ODD)
def test_one_bit_packing_is_exact(n):
    b = torch.randint(0, 2, (n,), generator=_gen(n), dtype=torch.uint8)
    packed = pack_bits(b, 1)
    assert packed.numel() == -(-n // 8)
    assert torch.equal(unpack_bits(packed, 1, n), b)
    # bit i of the stream is code i, low bits first
    assert int(packed[0]) == sum(int(b[i]) << i for i in range(min(8, n)))


@pytest.mark.parametrize("n", ODD)
@pytest.mark.parametrize("packing", ["2bit", "base3"])
def test_ternary_packings_are_exact(n, packing):
    codes = torch.randint(-1, 2, (n,), generator=_gen(n), dtype=torch.int8)
    packed = pack_ternary(codes, packing)
    assert packed.dtype == torch.uint8
    assert packed.numel() == (-(-n // 4) if packing == "2bit" else -(-n // 5))
    assert torch.equal(unpack_ternary(packed, packing, n), codes)


def test_base3_layout():
    digits = torch.tensor([2, 0, 1, 2, 2, 1], dtype=torch.uint8)
    packed = pack_base3(digits)
    assert packed.tolist() == [2 + 0 * 3 + 1 * 9 + 2 * 27 + 2 * 81, 1]  # 5 digits per byte, low first
    assert int(pack_base3(torch.full((5,), 2)).max()) == 242
    assert torch.equal(unpack_base3(packed, 6), digits)
    with pytest.raises(ValueError, match="digits"):
        pack_base3(torch.tensor([3]))
    with pytest.raises(ValueError, match="codes"):
        pack_ternary(torch.tensor([2]), "2bit")


def test_base3_is_chosen_when_smaller():
    assert best_packing(4) == "2bit"  # one byte either way: shifts decode faster
    assert all(best_packing(n) == "base3" for n in (5, 9, 21, 1000))
    t = TernaryTensor.encode(torch.randn(8, 100))
    assert t.packing == "base3" and t.codes.numel() == 160  # 1.6 bits per weight


def _reload(f):
    stored = {k: v.clone() for k, v in f.to_storage().items()}
    entry = json.loads(json.dumps(f.to_manifest()))
    g = FORMATS.get(entry["format"]).from_manifest(
        entry, {k: (tuple(v.shape), v.dtype) for k, v in stored.items()}
    )
    g.from_storage(stored)
    g.validate_loaded()
    return g


@pytest.mark.parametrize(
    "fmt",
    [
        BinaryTensor.encode(torch.randn(7, 33)),
        BinaryTensor.encode(torch.randn(3, 16), group_size=4),
        BinaryTensor.encode(torch.randn(5, 9), scaled=False),
        TernaryTensor.encode(torch.randn(7, 33), packing="2bit"),
        TernaryTensor.encode(torch.randn(7, 33), granularity="tensor"),
    ],
    ids=["binary", "binary-g4", "bnn", "ternary-2bit", "ternary-tensor-base3"],
)
def test_round_trip_and_tight_sizes(fmt):
    g = _reload(fmt)
    assert torch.equal(g.decode(), fmt.decode())
    n = fmt.shape.numel()
    rows = int(fmt.shape[0])
    if isinstance(fmt, BinaryTensor):
        scale = 0 if fmt.scale is None else fmt.scale.numel() * 4
        assert fmt.stored_nbytes() == -(-n // 8) + scale
    else:
        per = 4 if fmt.packing == "2bit" else 5
        assert fmt.stored_nbytes() == -(-n // per) + (1 if fmt.granularity == "tensor" else rows) * 4


def test_sign_of_zero_is_plus_one_and_values():
    w = torch.tensor([[0.0, -1.0, 2.0, -3.0]])
    b = BinaryTensor.encode(w)
    assert b.decode().tolist() == [[1.5, -1.5, 1.5, -1.5]]  # alpha = mean |w| = 1.5
    assert BinaryTensor.encode(w, scaled=False).decode().tolist() == [[1.0, -1.0, 1.0, -1.0]]
    t = TernaryTensor.encode(torch.tensor([[0.1, -1.0, 2.0, -0.9]]))  # gamma = 1.0
    assert t.int_values().tolist() == [[0, -1, 1, -1]]
    assert torch.equal(TernaryTensor.encode(torch.zeros(2, 6)).decode(), torch.zeros(2, 6))


def _specs(f):
    return {k: (tuple(v.shape), v.dtype) for k, v in f.to_storage().items()}


def test_metadata_that_does_not_fit_is_refused():
    t = TernaryTensor.encode(torch.randn(6, 10), packing="base3")
    entry = t.to_manifest()
    with pytest.raises(ArtifactError, match="codes"):  # 2-bit codes need 15 bytes, 12 stored
        TernaryTensor.from_manifest({**entry, "meta": {**entry["meta"], "packing": "2bit"}}, _specs(t))
    with pytest.raises(ArtifactError, match="packing"):
        TernaryTensor.from_manifest({**entry, "meta": {**entry["meta"], "packing": "base4"}}, _specs(t))
    with pytest.raises(ArtifactError, match="scale"):
        TernaryTensor.from_manifest({**entry, "meta": {**entry["meta"], "granularity": "tensor"}}, _specs(t))
    b = BinaryTensor.encode(torch.randn(6, 16))
    with pytest.raises(ArtifactError, match="bits"):
        BinaryTensor.from_manifest({**b.to_manifest(), "shape": [6, 17]}, _specs(b))
    with pytest.raises(ArtifactError, match="group_size"):
        BinaryTensor.from_manifest({**b.to_manifest(), "meta": {"group_size": 5}}, _specs(b))


def test_invalid_stored_codes_are_refused():
    t = TernaryTensor.encode(torch.randn(2, 10), packing="base3")
    t.codes[0] = 250
    with pytest.raises(ValueError, match="242"):
        t.validate_loaded()
    t2 = TernaryTensor.encode(torch.randn(2, 8), packing="2bit")
    t2.codes[0] = 0xFF
    with pytest.raises(ValueError, match="3"):
        t2.validate_loaded()
