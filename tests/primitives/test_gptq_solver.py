import pytest
import torch

from modelpress.primitives.gptq import HessianAccumulator, gptq_quantize
from modelpress.primitives.quant import choose_qparams, dequantize, quantize


def correlated_inputs(n: int, cols: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(cols, cols, generator=g) / cols**0.5 + torch.eye(cols)
    scale = torch.rand(cols, generator=g) * 4 + 0.1  # channels of very different magnitude
    return (torch.randn(n, cols, generator=g) @ mix) * scale


def hessian(x: torch.Tensor) -> torch.Tensor:
    acc = HessianAccumulator(x.shape[1])
    for part in x.split(100):
        acc.add(part)
    return acc.hessian()


@pytest.mark.parametrize("bits", [2, 3, 4])
@pytest.mark.parametrize(("group_size", "act_order"), [(None, False), (None, True), (32, False), (32, True)])
def test_reconstruction_error_below_rtn_on_correlated_inputs(bits, group_size, act_order):
    x = correlated_inputs(512, 128)
    w = torch.randn(48, 128, generator=torch.Generator().manual_seed(1))
    q, s, z = gptq_quantize(w, hessian(x), bits, group_size=group_size, act_order=act_order)
    w_gptq = dequantize(q, s, z, group_size=group_size)
    s0, z0 = choose_qparams(w, bits, symmetric=False, group_size=group_size)
    w_rtn = dequantize(quantize(w, s0, z0, bits, group_size=group_size), s0, z0, group_size=group_size)
    err_gptq = (x @ (w - w_gptq).T).norm()
    err_rtn = (x @ (w - w_rtn).T).norm()
    assert err_gptq < (0.9 if bits > 2 else 1.0) * err_rtn


@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("group_size", [None, 16])
def test_uncorrelated_inputs_give_round_to_nearest(symmetric, group_size):
    # H = I: no error can be compensated, so GPTQ must round exactly like RTN
    w = torch.randn(8, 64, generator=torch.Generator().manual_seed(2))
    q, s, z = gptq_quantize(w, torch.eye(64), 4, group_size=group_size, symmetric=symmetric)
    s0, z0 = choose_qparams(w, 4, symmetric=symmetric, group_size=group_size)
    torch.testing.assert_close(s, s0)
    assert (z is None) == symmetric and (z is None or torch.equal(z, z0))
    assert torch.equal(q, quantize(w, s0, z0, 4, group_size=group_size).to(torch.int32))


def test_integers_stay_in_range_and_dead_inputs_are_zeroed():
    x = correlated_inputs(256, 32)
    x[:, 5] = 0  # an input that never fires
    w = torch.randn(4, 32, generator=torch.Generator().manual_seed(3)) * 10
    q, s, z = gptq_quantize(w, hessian(x), 3, group_size=8)
    assert int(q.min()) >= 0 and int(q.max()) <= 7
    w_hat = dequantize(q, s, z, group_size=8)
    assert torch.allclose(w_hat[:, 5], torch.zeros(4), atol=float(s.max()))


def test_bad_input():
    h = torch.eye(16)
    with pytest.raises(ValueError, match="NaN"):
        gptq_quantize(torch.full((2, 16), float("nan")), h, 4)
    with pytest.raises(ValueError, match="do not match"):
        gptq_quantize(torch.randn(2, 8), h, 4)
    with pytest.raises(ValueError, match="does not divide"):
        gptq_quantize(torch.randn(2, 16), h, 4, group_size=5)
    with pytest.raises(ValueError, match="no calibration input"):
        HessianAccumulator(4).hessian()
    with pytest.raises(ValueError, match="NaN"):
        HessianAccumulator(2).add(torch.tensor([[1.0, float("nan")]]))
