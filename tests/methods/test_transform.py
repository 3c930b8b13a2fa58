"""The weight-transform helper: encode, wrap, replace, tied weights once, skips noted."""

import torch
from torch import nn

from modelpress.formats import AffineQuantized
from modelpress.methods.base import CompressContext
from modelpress.methods.transform import Skip, transform_weights
from modelpress.nn.decoded import DecodedEmbedding, DecodedLinear


class _Tied(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(10, 8)
        self.body = nn.Linear(8, 8)
        self.small = nn.Linear(8, 2)
        self.head = nn.Linear(8, 10, bias=False)
        self.head.weight = self.emb.weight  # tied

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.small.weight.sum() + self.body(self.emb(ids)))


def test_tied_weights_share_one_format_and_skips_are_noted():
    torch.manual_seed(0)
    model = _Tied()
    calls: list[str] = []

    def encode(name: str, mod: nn.Module):
        calls.append(name)
        if name == "small":
            return Skip("too small")
        return AffineQuantized.encode(mod.weight.detach(), 8)

    ctx = CompressContext(progress=False)
    targets = [(n, m) for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Embedding))]
    res = transform_weights(model, targets, encode, ctx=ctx, method="demo")
    assert calls == ["emb", "body", "small"]  # the tied head is not encoded again
    assert res.replaced == ["emb", "body", "head"] and res.skipped == {"small": "too small"}
    assert isinstance(model.emb, DecodedEmbedding) and isinstance(model.head, DecodedLinear)
    assert model.head.weight is model.emb.weight  # one format object
    assert isinstance(model.small, nn.Linear)
    assert ctx.notes == ["demo: small left uncompressed: too small"]


def test_none_skips_without_a_reason_of_its_own():
    model = nn.Sequential(nn.Linear(4, 4))
    res = transform_weights(model, list(model.named_children()), lambda n, m: None)
    assert res.skipped == {"0": "not encoded"} and isinstance(model[0], nn.Linear)
