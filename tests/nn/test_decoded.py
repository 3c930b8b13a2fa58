import torch
import torch.nn.functional as F
from torch import nn

from modelpress.formats import Codebook
from modelpress.nn import DecodedConv, DecodedEmbedding, DecodedLinear
from modelpress.primitives.kmeans import fit_kmeans


def _cluster(w: torch.Tensor, bits: int = 4) -> Codebook:
    r = fit_kmeans(w.reshape(w.shape[0], -1), 2**bits)
    return Codebook.from_codes(w.shape, r.codes, r.centroids, bits=bits, granularity="channel")


def test_compressed_ops_equal_ops_on_decoded_weights(device, monkeypatch):
    # the modules' wiring, exactly: the reference kernel (faster kernels: tests/kernels)
    monkeypatch.setenv("MODELPRESS_KERNELS", "linear=reference")
    torch.manual_seed(0)
    lin, emb, conv = nn.Linear(32, 12), nn.Embedding(50, 16), nn.Conv2d(3, 8, 3, padding=1, stride=2)
    dl = DecodedLinear.wrap(lin, _cluster(lin.weight)).to(device)
    de = DecodedEmbedding.wrap(emb, _cluster(emb.weight)).to(device)
    dc = DecodedConv.wrap(conv, _cluster(conv.weight, 4)).to(device)
    lin, conv = lin.to(device), conv.to(device)
    x = torch.randn(4, 32, device=device)
    assert torch.equal(dl(x), F.linear(x, dl.weight.decode(), lin.bias))
    ids = torch.tensor([[3, 3, 49], [0, 7, 3]], device=device)
    assert torch.equal(de(ids), F.embedding(ids, de.weight.decode()))
    img = torch.randn(2, 3, 9, 9, device=device)
    assert torch.equal(dc(img), F.conv2d(img, dc.weight.decode(), conv.bias, 2, 1))


def test_centroid_gradient_is_sum_of_shared_weight_gradients():
    torch.manual_seed(0)
    lin = nn.Linear(16, 4, bias=False)
    f = _cluster(lin.weight, 2)
    d = DecodedLinear.wrap(lin, f)
    f._buffers["codebook"] = f.codebook.clone().requires_grad_(True)
    x = torch.randn(5, 16)
    d(x).pow(2).sum().backward()
    w = f.decode().detach().requires_grad_(True)
    F.linear(x, w).pow(2).sum().backward()
    codes = f.code_values().long().reshape(4, 16)
    expected = torch.zeros(4, 4).scatter_add_(1, codes, w.grad)
    torch.testing.assert_close(f.codebook.grad, expected)
