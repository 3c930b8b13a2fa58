import torch
import torch.nn.functional as F
from torch import nn

from modelpress import kernels
from modelpress.nn import Int8DynamicLinear, Int8Embedding
from modelpress.primitives.quant import quantize_per_token_int8


def test_int8_linear_equals_op_on_decoded_weights(device):
    """Oracle: the int8 GEMM equals the float matmul of the dequantized operands."""
    torch.manual_seed(0)
    lin = nn.Linear(48, 24).to(device)
    q = Int8DynamicLinear.from_float(lin)
    x = torch.randn(3, 8, 48, device=device)  # 24 rows: CUDA's int8 GEMM needs more than 16
    xq, xs = quantize_per_token_int8(x.reshape(-1, 48))
    expected = F.linear(xq.float() * xs, q.weight.decode(), lin.bias).reshape(3, 8, 24)
    kernels.force("linear_a8", "int_mm")  # the per-token kernel, exactly
    try:
        torch.testing.assert_close(q(x), expected, rtol=1e-5, atol=1e-5)
    finally:
        kernels.force("linear_a8", None)
    # and whichever kernel this machine chose stays close to the float layer
    rel = (q(x) - lin(x)).norm() / lin(x).norm()
    assert rel < 0.02


def test_int8_linear_no_bias_and_empty_batch():
    lin = nn.Linear(16, 8, bias=False)
    q = Int8DynamicLinear.from_float(lin)
    assert q.bias is None
    assert q(torch.randn(0, 16)).shape == (0, 8)


def test_int8_embedding_equals_decoded_lookup():
    torch.manual_seed(0)
    emb = nn.Embedding(50, 12, padding_idx=0)
    q = Int8Embedding.from_float(emb)
    ids = torch.tensor([[1, 2, 49], [0, 3, 3]])
    torch.testing.assert_close(q(ids), F.embedding(ids, q.weight.decode()))
    assert q.padding_idx == 0
