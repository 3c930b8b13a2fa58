import pytest
import torch

from modelpress.primitives.quant import choose_qparams, dequantize, qrange, quantize, quantize_per_token_int8


def _reference_sym(w: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Plain per-row symmetric round-to-nearest, written out element by element."""
    qmax = 2 ** (bits - 1) - 1
    q = torch.empty_like(w, dtype=torch.int8)
    s = torch.empty(w.shape[0], 1)
    for i in range(w.shape[0]):
        scale = max(float(w[i].abs().max()) / qmax, 1e-12)
        s[i, 0] = scale
        for j in range(w.shape[1]):
            q[i, j] = int(max(-qmax, min(qmax, round(float(w[i, j]) / scale))))
    return q, s


@pytest.mark.parametrize("bits", [8, 4])
def test_symmetric_matches_reference(bits):
    torch.manual_seed(0)
    w = torch.randn(6, 10)
    scale, zp = choose_qparams(w, bits)
    q = quantize(w, scale, zp, bits)
    ref_q, ref_s = _reference_sym(w, bits)
    assert zp is None
    torch.testing.assert_close(scale, ref_s)
    # round-half-even (torch) vs Python round agree except at exact .5 ties, absent here
    assert torch.equal(q, ref_q)
    torch.testing.assert_close(dequantize(q, scale), ref_q.float() * ref_s)


def test_asymmetric_groups_roundtrip_error_bounded():
    torch.manual_seed(0)
    w = torch.randn(4, 64) + 0.5
    scale, zp = choose_qparams(w, 4, symmetric=False, group_size=16)
    assert scale.shape == (4, 4) and zp is not None and zp.shape == (4, 4)
    q = quantize(w, scale, zp, 4, group_size=16)
    assert q.dtype == torch.uint8 and int(q.min()) >= 0 and int(q.max()) <= 15
    w_hat = dequantize(q, scale, zp, group_size=16)
    # error of round-to-nearest is at most half a step (plus float slack)
    step = scale.repeat_interleave(16, dim=1)
    assert ((w - w_hat).abs() <= step / 2 + 1e-6).all()


def test_int8_sqnr_floor():
    torch.manual_seed(0)
    w = torch.randn(256, 256) * 0.05
    scale, _ = choose_qparams(w, 8)
    w_hat = dequantize(quantize(w, scale), scale)
    sqnr = 20 * torch.log10(w.norm() / (w - w_hat).norm())
    assert sqnr > 38  # ~6 dB/bit minus the Gaussian's peak-to-rms loss


def test_per_token_activation_quant():
    x = torch.tensor([[0.0, 1.0, -2.0], [0.5, 0.25, 0.0]])
    xq, s = quantize_per_token_int8(x)
    assert xq.dtype == torch.int8 and s.shape == (2, 1)
    assert xq[0].tolist() == [0, 64, -127] and xq[1].tolist() == [127, 64, 0]


def test_bad_inputs():
    with pytest.raises(ValueError, match="NaN"):
        choose_qparams(torch.tensor([[1.0, float("nan")]]))
    with pytest.raises(ValueError, match="does not divide"):
        choose_qparams(torch.randn(2, 10), group_size=4)
    with pytest.raises(ValueError, match="2-D"):
        choose_qparams(torch.randn(2, 3, 4))
    with pytest.raises(ValueError, match="bits"):
        qrange(9, True)
