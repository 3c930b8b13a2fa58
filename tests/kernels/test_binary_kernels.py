"""The binary / ternary kernels (kernels/binary.py) agree with the reference op on decoded
weights: the XNOR + popcount kernel (exact integer dot products), and ternary (and per-row
binary) weights run through torch's int8 weight kernels with no loss in the weight."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from modelpress import kernels
from modelpress.formats import AffineQuantized, BinaryTensor, TernaryTensor
from modelpress.kernels import dispatch, ext
from modelpress.kernels.binary import binarize_input
from modelpress.kernels.int8 import AVX2_MAX_ROWS, _linear_a8
from modelpress.nn.binary import XnorLinear


@pytest.fixture(autouse=True)
def _unpinned(monkeypatch):
    monkeypatch.delenv("MODELPRESS_KERNELS", raising=False)
    forced = dict(dispatch._forced)
    dispatch._forced.clear()
    yield
    dispatch._forced.clear()
    dispatch._forced.update(forced)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30))


def _pinned(op: str, name: str, x, fmt, **kw) -> torch.Tensor:
    kernels.force(op, name)
    try:
        assert kernels.chosen(op, fmt, x).name == name
        return kernels.run(op, x, fmt, **kw)
    finally:
        kernels.force(op, None)


def _x(n: int, cols: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, cols, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("rows, cols", [(5, 37), (16, 64), (3, 1), (33, 129)])
@pytest.mark.parametrize("n", [1, 7, 300])
@pytest.mark.parametrize("scaled", [True, False])
def test_xnor_popcount_equals_reference(rows, cols, n, scaled):
    w = torch.randn(rows, cols, generator=torch.Generator().manual_seed(rows))
    fmt = BinaryTensor.encode(w, scaled=scaled)
    x, bias = _x(n, cols), torch.randn(rows)
    ref = F.linear(binarize_input(x, scaled), fmt.decode(), bias)
    assert torch.equal(_pinned("linear_xnor", "reference", x, fmt, bias=bias, act_scaled=scaled), ref)
    out = _pinned("linear_xnor", "xnor_popcount", x, fmt, bias=bias, act_scaled=scaled)
    assert out.shape == ref.shape and out.dtype == ref.dtype
    assert _rel(out, ref) < 1e-5
    if not scaled:  # ±1 x ±1: integer outputs, exactly
        exact = F.linear(binarize_input(x, False), fmt.decode())
        assert torch.equal(_pinned("linear_xnor", "xnor_popcount", x, fmt, act_scaled=False), exact)


def test_xnor_linear_module_equals_op_on_decoded():
    lin = torch.nn.Linear(24, 10)
    fmt = BinaryTensor.encode(lin.weight.detach())
    m = XnorLinear.wrap(lin, fmt)
    x = torch.randn(2, 3, 24)
    ref = F.linear(binarize_input(x, True), fmt.decode(), lin.bias.detach())
    with torch.no_grad():
        torch.testing.assert_close(m(x), ref, rtol=1e-5, atol=1e-5)
    assert "linear_xnor" in kernels.used(m)


_INT8_CASES = [
    ("ternary-channel", lambda w: TernaryTensor.encode(w)),
    ("ternary-tensor-2bit", lambda w: TernaryTensor.encode(w, granularity="tensor", packing="2bit")),
    ("binary-channel", lambda w: BinaryTensor.encode(w)),
    ("binary-unscaled", lambda w: BinaryTensor.encode(w, scaled=False)),
]


@pytest.mark.parametrize("case", _INT8_CASES, ids=[c[0] for c in _INT8_CASES])
@pytest.mark.parametrize(
    "kernel, tol", [("ternary_int8pack", 0.01), ("ternary_fbgemm", 0.03), ("ternary_avx2", 0.03)]
)
@pytest.mark.parametrize("n", [1, 5, 70])
def test_int8_weight_kernels_agree(case, kernel, tol, n):
    if not any(k.name == kernel for k in kernels.KERNELS["linear"]):
        pytest.skip(f"{kernel} is not available in this torch")
    if kernel == "ternary_avx2" and not (ext.available() and ext.load().has_avx2()):
        pytest.skip("the AVX2 kernels need the C++ extension and a CPU with AVX2")
    if kernel == "ternary_avx2" and n > AVX2_MAX_ROWS:
        n = AVX2_MAX_ROWS  # a kernel for a few rows
    w = torch.randn(48, 96, generator=torch.Generator().manual_seed(0)) * 0.05
    fmt = case[1](w)
    x, bias = _x(n, 96), torch.randn(48)
    ref = F.linear(x, fmt.decode(), bias)
    out = _pinned("linear", kernel, x, fmt, bias=bias)
    assert out.dtype == torch.float32 and out.shape == ref.shape
    assert _rel(out, ref) < tol


def test_ternary_avx2_is_bitwise_the_int8_kernel_on_the_codes():
    if not (ext.available() and ext.load().has_avx2()):
        pytest.skip("the AVX2 kernels need the C++ extension and a CPU with AVX2")
    fmt = TernaryTensor.encode(torch.randn(37, 83, generator=torch.Generator().manual_seed(2)))
    q, s = fmt.int_values().to(torch.int8), fmt.scale.float().reshape(-1)
    x = _x(3, 83)
    want = _linear_a8(None, x, AffineQuantized(fmt.shape, qdata=q, scale=s.reshape(-1, 1), bits=8))
    assert torch.equal(_pinned("linear", "ternary_avx2", x, fmt), want)


def test_int8pack_refuses_widths_it_cannot_run():
    fmt = TernaryTensor.encode(torch.randn(8, 40))
    names = [k.name for k in kernels.candidates("linear", fmt, torch.randn(1, 40))]
    assert "ternary_int8pack" not in names and "reference" in names
    group = BinaryTensor.encode(torch.randn(8, 64), group_size=16)  # per-group scales: not an int8 row scale
    names = [k.name for k in kernels.candidates("linear", group, torch.randn(1, 64))]
    assert "ternary_fbgemm" not in names and "ternary_int8pack" not in names
    assert "xnor_popcount" not in [
        k.name for k in kernels.candidates("linear_xnor", group, torch.randn(1, 64))
    ]
