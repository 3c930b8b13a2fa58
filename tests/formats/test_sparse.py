import pytest
import torch
import torch.nn.functional as F
from torch import nn

from modelpress.formats import SparseTensor
from modelpress.formats.sparse import relative_index
from modelpress.nn.decoded import wrap_decoded


def _roundtrip(f: SparseTensor) -> SparseTensor:
    sd = f.to_storage()
    g = SparseTensor.from_manifest(f.to_manifest(), {k: (tuple(v.shape), v.dtype) for k, v in sd.items()})
    g.from_storage(sd)
    return g


def _pruned(shape, density, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(shape, generator=g).to(dtype)
    mask = torch.rand(shape, generator=g) < density
    return w * mask, mask


@pytest.mark.parametrize("index", ["bitmask", "relative4", "relative8", "auto"])
@pytest.mark.parametrize("density", [0.5, 0.08, 0.01])
def test_decode_exact_and_roundtrip(index, density):
    w, mask = _pruned((37, 53), density)
    f = SparseTensor.encode(w, mask, index=index)
    assert torch.equal(f.decode(), w)
    g = _roundtrip(f)
    assert torch.equal(g.decode(), w) and g.index_kind == f.index_kind
    assert torch.equal(f.mask() & mask, mask)  # every kept position is stored


def test_relative_index_fillers():
    mask = torch.zeros(40, dtype=torch.bool)
    mask[[0, 3, 39]] = True  # gaps 1, 3, 36 -> with 4-bit codes (gap <= 16) two fillers
    entry, codes = relative_index(mask, 4)
    assert entry.tolist() == [0, 1, -1, -1, 2]
    assert codes.tolist() == [0, 2, 15, 15, 3]  # 3 + 16 + 16 + 4 = 39


def test_half_pruned_fp32_costs_half_plus_a_bit_per_weight():
    w, mask = _pruned((256, 512), 0.5)
    mask = torch.zeros_like(mask)
    mask.view(-1)[
        torch.randperm(mask.numel(), generator=torch.Generator().manual_seed(0))[: mask.numel() // 2]
    ] = True
    f = SparseTensor.encode(w * mask, mask)
    dense = w.numel() * 4
    assert f.index_kind == "bitmask"
    assert f.nbytes() == dense // 2 + w.numel() // 8  # 50 % + 1/32 of dense exactly
    sparse = SparseTensor.encode(*_pruned((256, 512), 0.05))
    assert sparse.index_kind.startswith("relative") and sparse.nbytes() < 0.05 * dense * 1.4


def test_fp16_values_keep_dtype():
    w, mask = _pruned((8, 16), 0.5, dtype=torch.float16)
    f = SparseTensor.encode(w, mask)
    assert f.values.dtype == torch.float16 and torch.equal(f.decode(), w)


def test_modules_equal_ops_on_decoded_weight(device, monkeypatch):
    # the modules' wiring, exactly: the reference kernel (faster kernels: tests/kernels)
    monkeypatch.setenv("MODELPRESS_KERNELS", "linear=reference")
    w, mask = _pruned((24, 40), 0.3)
    lin = nn.Linear(40, 24)
    with torch.no_grad():
        lin.weight.copy_(w)
    m = wrap_decoded(lin, SparseTensor.encode(w, mask)).to(device)
    x = torch.randn(5, 40, device=device)
    torch.testing.assert_close(m(x), F.linear(x, m.weight.decode(), m.bias), rtol=0, atol=0)
    conv = nn.Conv2d(3, 8, 3)
    wc, mc = _pruned(conv.weight.shape, 0.4)
    c = wrap_decoded(conv, SparseTensor.encode(wc, mc)).to(device)
    xi = torch.randn(2, 3, 9, 9, device=device)
    torch.testing.assert_close(c(xi), F.conv2d(xi, wc.to(device), c.bias), rtol=0, atol=0)
    emb = nn.Embedding(50, 16)
    we, me = _pruned((50, 16), 0.5)
    e = wrap_decoded(emb, SparseTensor.encode(we, me, index="bitmask")).to(device)
    ids = torch.tensor([[3, 49, 3, 0]], device=device)
    assert torch.equal(e(ids), we.to(device)[ids])
