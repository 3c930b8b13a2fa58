"""LSQ fake quantization (primitives/lsq.py): forward equals quantize/dequantize bit for bit,
gradients equal an autograd reference built from the paper's STE, edge cases."""

from __future__ import annotations

import math

import pytest
import torch

from modelpress.primitives.lsq import lsq_fake_quantize, lsq_grad_scale, lsq_ints
from modelpress.primitives.quant import choose_qparams, dequantize, qrange, quantize


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _setup(bits: int, symmetric: bool, group_size: int | None, seed: int = 0, shrink: float = 0.7):
    """A weight (5, 24) and qparams that clip some of it (``shrink`` < 1), so both the inside
    and the outside branches of LSQ are exercised."""
    g = _gen(seed)
    w = torch.randn(5, 24, generator=g)
    scale, zp = choose_qparams(w, bits, symmetric=symmetric, group_size=group_size)
    scale = scale * shrink
    zpf = None if zp is None else zp.float() + torch.rand(zp.shape, generator=g) * 0.8 - 0.4
    return w, scale, zpf


_CASES = [
    (8, True, None),
    (4, True, None),
    (4, False, 8),
    (3, False, None),
    (2, True, 6),
    (8, False, 12),
]


@pytest.mark.parametrize(("bits", "symmetric", "group_size"), _CASES)
def test_forward_equals_dequantize_of_lsq_ints_and_of_quantize(bits, symmetric, group_size):
    w, scale, zpf = _setup(bits, symmetric, group_size)
    out = lsq_fake_quantize(w, scale, zpf, bits, group_size=group_size)
    assert out.dtype == torch.float32 and out.shape == w.shape
    q, z = lsq_ints(w, scale, zpf, bits, group_size=group_size)
    assert q.dtype == (torch.int8 if symmetric else torch.uint8) and q.shape == w.shape
    if symmetric:
        assert z is None
    else:
        assert z.dtype == torch.int16 and z.shape == scale.shape
        qmin, qmax = qrange(bits, False)
        assert torch.equal(z, torch.round(zpf).clamp(qmin, qmax).to(torch.int16))
    assert torch.equal(out, dequantize(q, scale, z, group_size=group_size))  # bit for bit
    assert torch.equal(q, quantize(w, scale, z, bits, group_size=group_size))  # = PTQ's integers


def _reference(w, scale, zp, bits, group_size):
    """LSQ(+) written with autograd: STE rounding inside the code range, the clipped code
    (constant in ``w``) outside; zero point rounded and clamped with an STE."""
    rows, cols = w.shape
    gsz = cols if group_size is None else group_size
    qmin, qmax = qrange(bits, zp is None)
    wg = w.reshape(rows, cols // gsz, gsz)
    s = scale.unsqueeze(-1)
    v = wg / s
    if zp is None:
        z = torch.zeros_like(s)
    else:
        z = (zp + (torch.round(zp).clamp(qmin, qmax) - zp).detach()).unsqueeze(-1)
    u = (v + z).detach()
    inside = (u >= qmin) & (u <= qmax)
    q_inside = v + (torch.round(v) - v).detach()  # round with a straight-through gradient
    clipped = (torch.round(v.detach()) + z.detach()).clamp(qmin, qmax)
    out = torch.where(inside, q_inside * s, (clipped - z) * s)
    return out.reshape(w.shape)  # (LSQ's gradient scale g is applied by the caller)


def _grads(fn, w, scale, zp, upstream):
    w = w.clone().requires_grad_(True)
    scale = scale.clone().requires_grad_(True)
    zp = None if zp is None else zp.clone().requires_grad_(True)
    out = fn(w, scale, zp)
    out.backward(upstream)
    return out.detach(), w.grad, scale.grad, None if zp is None else zp.grad


@pytest.mark.parametrize(("bits", "symmetric", "group_size"), _CASES)
def test_gradients_equal_autograd_reference(bits, symmetric, group_size):
    w, scale, zpf = _setup(bits, symmetric, group_size, seed=1)
    up = torch.randn(w.shape, generator=_gen(2))
    gsc = 0.37
    got = _grads(
        lambda a, b, c: lsq_fake_quantize(a, b, c, bits, group_size=group_size, grad_scale=gsc),
        w,
        scale,
        zpf,
        up,
    )
    ref = _grads(lambda a, b, c: _reference(a, b, c, bits, group_size), w, scale, zpf, up)
    torch.testing.assert_close(got[0], ref[0], rtol=0, atol=1e-6)
    torch.testing.assert_close(got[1], ref[1], rtol=1e-6, atol=0)  # the STE mask (ref: up*s/s)
    assert torch.equal(got[1] == 0, ref[1] == 0)
    assert 0 < int((got[1] == 0).sum()) < w.numel() // 2  # both branches are exercised
    torch.testing.assert_close(got[2], ref[2] * gsc, rtol=1e-5, atol=1e-6)
    if not symmetric:
        torch.testing.assert_close(got[3], ref[3] * gsc, rtol=1e-5, atol=1e-6)


def test_gradients_hand_computed_single_weight():
    """One weight, one scale: every branch by hand (LSQ eq. 3)."""
    s = torch.tensor([[0.5]])
    gsc = 1.0
    for wv, code, ds in [
        (0.6, 1.0, 1.0 - 1.2),  # inside: round(v) - v, v = 1.2
        (0.1, 0.0, 0.0 - 0.2),  # inside, rounds to 0
        (100.0, 7.0, 7.0),  # above: Q_P (4-bit symmetric: 7)
        (-100.0, -7.0, -7.0),  # below: -Q_N
        (0.0, 0.0, 0.0),  # zero weight
    ]:
        w = torch.tensor([[wv]], requires_grad=True)
        sc = s.clone().requires_grad_(True)
        out = lsq_fake_quantize(w, sc, None, 4, grad_scale=gsc)
        out.sum().backward()
        assert float(out.detach()) == pytest.approx(code * 0.5)
        assert float(sc.grad) == pytest.approx(ds, abs=1e-6)
        assert float(w.grad) == (1.0 if abs(wv) < 10 else 0.0)


def test_zero_point_gradient_is_minus_scale_outside():
    w = torch.tensor([[-5.0, 0.2, 9.0]], requires_grad=True)  # below, inside, above
    s = torch.tensor([[0.25]], requires_grad=True)
    z = torch.tensor([[3.2]], requires_grad=True)  # rounds to 3
    out = lsq_fake_quantize(w, s, z, 4, grad_scale=1.0)
    # 4-bit asymmetric codes 0..15: -5/0.25 + 3 = -17 -> 0; 0.2/0.25 + 3 = 3.8 -> 4; 9/.25+3 -> 15
    assert out.detach().tolist() == [[(0 - 3) * 0.25, (4 - 3) * 0.25, (15 - 3) * 0.25]]
    out.sum().backward()
    assert w.grad.tolist() == [[0.0, 1.0, 0.0]]
    assert float(z.grad) == pytest.approx(-0.25 * 2)  # two clipped weights
    assert float(s.grad) == pytest.approx((0 - 3) + (1 - 0.8) + (15 - 3), rel=1e-6)  # clipped, r-v, clipped


def test_grad_scale_default_is_lsq_g():
    assert lsq_grad_scale(64, 4, True) == pytest.approx(1 / math.sqrt(64 * 7))
    assert lsq_grad_scale(128, 8, False) == pytest.approx(1 / math.sqrt(128 * 255))
    assert lsq_grad_scale(1, 2, True) == pytest.approx(1.0)
    w, scale, _ = _setup(4, True, 8)
    up = torch.randn(w.shape, generator=_gen(3))
    a = _grads(lambda x, s, z: lsq_fake_quantize(x, s, z, 4, group_size=8), w, scale, None, up)
    b = _grads(
        lambda x, s, z: lsq_fake_quantize(x, s, z, 4, group_size=8, grad_scale=lsq_grad_scale(8, 4, True)),
        w,
        scale,
        None,
        up,
    )
    assert torch.equal(a[2], b[2])
    c = _grads(lambda x, s, z: lsq_fake_quantize(x, s, z, 4), w, scale[:, :1], None, up)  # per channel
    d = _grads(
        lambda x, s, z: lsq_fake_quantize(x, s, z, 4, grad_scale=lsq_grad_scale(24, 4, True)),
        w,
        scale[:, :1],
        None,
        up,
    )
    assert torch.equal(c[2], d[2])


def test_zero_weights_and_clamped_zero_point():
    w = torch.zeros(2, 4)
    s = torch.full((2, 1), 0.1)
    assert torch.equal(lsq_fake_quantize(w, s, None, 8), torch.zeros(2, 4))
    z = torch.tensor([[300.0], [-20.0]])  # out of the 4-bit range: clamped to 15 and 0
    q, zi = lsq_ints(w, s, z, 4)
    assert zi.tolist() == [[15], [0]]
    assert torch.equal(lsq_fake_quantize(w, s, z, 4), dequantize(q, s, zi))
    assert torch.equal(lsq_fake_quantize(w, s, z, 4), torch.zeros(2, 4))  # 0 stays exactly 0


def test_weight_dtype_of_the_gradient_follows_the_weight():
    w = torch.randn(3, 8, generator=_gen(), dtype=torch.float64, requires_grad=True)
    s = torch.full((3, 1), 0.05, requires_grad=True)
    out = lsq_fake_quantize(w, s, None, 8)
    assert out.dtype == torch.float32
    out.sum().backward()
    assert w.grad.dtype == torch.float64 and s.grad.dtype == torch.float32


def test_group_size_must_divide_the_row():
    w, s = torch.randn(2, 10), torch.ones(2, 3)
    with pytest.raises(ValueError, match="group size 4 does not divide the row length 10"):
        lsq_fake_quantize(w, s, None, 4, group_size=4)
    with pytest.raises(ValueError, match="does not divide"):
        lsq_ints(w, s, None, 4, group_size=4)
    with pytest.raises(ValueError, match=r"bits must be in 2\.\.8"):
        lsq_fake_quantize(w, torch.ones(2, 1), None, 9)
