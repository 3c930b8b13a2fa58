"""Binary / ternary modules: the XNOR linear (binary weights × binary activations) that an
artifact holds, and the training-time layers of binarization-aware training.

``XnorLinear`` binarizes its input per token, ``x̂ = sign(x)·β`` with ``β = mean|x|`` over
the features (XNOR-Net's input scaling; ``act_scaled=False``: ``sign(x)`` alone, BNN), and
multiplies it by the decoded ``binary`` weight through the ``linear_xnor`` kernel op
(``kernels/binary.py``: an XNOR + popcount kernel, and the reference on decoded weights).

``FakeBinaryLinear`` / ``FakeBinaryEmbedding`` keep the latent full-precision weight of an
``nn.Linear`` / ``nn.Embedding`` and compute with its binarized (or ternarized) value; the
gradient reaches the latent weight through the clipped straight-through estimator:
``∂ŵ/∂w = 1`` where ``|w| ≤ clip``, 0 elsewhere (Courbariaux et al. 2016; Bengio et al.
arXiv 1308.3432); likewise for binarized activations. They exist only while a method
trains and are never saved: ``to_format`` gives the stored format whose decode equals the
weight they computed with, bit for bit.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .. import kernels
from ..formats.base import CompressedTensor
from ..formats.binary import BinaryTensor, TernaryTensor, binary_scale, ternary_codes, ternary_scale
from ..kernels.binary import binarize_input
from .base import CompressedModule, register_module

__all__ = [
    "FakeBinaryEmbedding",
    "FakeBinaryLinear",
    "WeightBinarizer",
    "XnorLinear",
    "binarize_activations",
    "ste",
]

WEIGHT_MODES = ("binary", "sign", "ternary")


def ste(x: torch.Tensor, q: torch.Tensor, clip: float | None) -> torch.Tensor:
    """The value ``q`` with the clipped straight-through gradient of ``x``: the upstream
    gradient passes where ``|x| ≤ clip`` (everywhere with ``clip=None``), 0 elsewhere.
    The forward value is ``q`` exactly."""
    if not (torch.is_grad_enabled() and x.requires_grad):
        return q
    d = x - x.detach()  # exactly 0, carries the gradient
    if clip is not None:
        d = d * (x.detach().abs() <= clip).to(d.dtype)
    return q.detach() + d


def _sign(x: torch.Tensor) -> torch.Tensor:
    """±1 with ``sign(0) = +1`` (a bit has two values)."""
    return torch.where(x >= 0, 1.0, -1.0).to(torch.float32)


def binarize_activations(
    x: torch.Tensor, scaled: bool = True, clip: float | None = None, centered: bool = False
) -> torch.Tensor:
    """XNOR-Net's input binarization per token (last dim): ``sign(x)·mean|x|``, or ``sign(x)``
    (BNN, ``scaled=False``), in ``x``'s dtype; the clipped STE with ``clip``.

    ``centered``: the token's mean ``μ`` is taken out first and added back exactly,
    ``binarize(x − μ) + μ``. Without it the signs of non-negative inputs (after a ReLU) are
    all +1 and every token binarizes to the same vector; ``XnorLinear`` computes the ``μ``
    term as ``μ·Σ_j Ŵ_ij`` (one float per token and output), the rest through XNOR."""
    xd = x.detach()
    if not centered:
        return ste(x, binarize_input(xd, scaled), clip)
    mu = xd.mean(-1, keepdim=True)
    return ste(x, binarize_input(xd - mu, scaled) + mu, clip)


class WeightBinarizer(nn.Module):
    """How a latent weight becomes binary or ternary (no parameters of its own: the scale
    is a function of the latent weight, recomputed at each call).

    mode: ``binary`` (``sign(W)·α``, α = mean|W| per row or group: BWN / XNOR-Net),
    ``sign`` (``sign(W)``: BNN), ``ternary`` (BitNet b1.58 absmean: ``γ·RoundClip(W/γ)``
    per tensor or row)."""

    def __init__(
        self,
        mode: str,
        *,
        group_size: int | None = None,
        granularity: str = "channel",
        packing: str = "auto",
        clip: float | None = 1.0,
    ) -> None:
        super().__init__()
        if mode not in WEIGHT_MODES:
            raise ValueError(f"mode must be one of {', '.join(WEIGHT_MODES)}, got {mode!r}")
        self.mode, self.group_size, self.granularity = mode, group_size, granularity
        self.packing, self.clip = packing, clip

    def quantized(self, w: torch.Tensor) -> torch.Tensor:
        """The binarized / ternarized value of ``w`` (float32, no gradient): what the stored
        format decodes to."""
        w = w.detach().float()
        if self.mode == "ternary":
            s = ternary_scale(w, self.granularity)
            return ternary_codes(w, s).to(torch.float32) * s
        signs = _sign(w)
        if self.mode == "sign":
            return signs
        g = int(w.shape[1]) if self.group_size is None else self.group_size
        return signs * binary_scale(w, self.group_size).repeat_interleave(g, dim=1)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return ste(w, self.quantized(w).to(w.dtype), self.clip)

    @torch.no_grad()
    def to_format(self, w: torch.Tensor) -> CompressedTensor:
        w = w.detach().float()
        if self.mode == "ternary":
            return TernaryTensor.encode(w, granularity=self.granularity, packing=self.packing)
        return BinaryTensor.encode(w, scaled=self.mode == "binary", group_size=self.group_size)

    def extra_repr(self) -> str:
        return f"mode={self.mode}, clip={self.clip}"


class FakeBinaryLinear(nn.Module):
    """An ``nn.Linear`` (kept, its weight the latent one) computing with the binarized
    weight, and with binarized inputs when ``act`` is ``scaled`` / ``sign`` (XNOR / BNN)."""

    def __init__(
        self, linear: nn.Linear, binarizer: WeightBinarizer, act: str | None = None, centered: bool = False
    ) -> None:
        super().__init__()
        self.linear = linear
        self.binarizer = binarizer
        self.act = act
        self.centered = centered

    @property
    def weight(self) -> torch.Tensor:
        return self.linear.weight

    @property
    def bias(self) -> torch.Tensor | None:
        return self.linear.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.act is not None:
            x = binarize_activations(x, self.act == "scaled", self.binarizer.clip, self.centered)
        w = self.binarizer(self.linear.weight).to(x.dtype)
        b = self.linear.bias
        return F.linear(x, w, None if b is None else b.to(x.dtype))


class FakeBinaryEmbedding(nn.Module):
    """An ``nn.Embedding`` whose table is binarized (the whole table: row-wise scales make
    the looked-up rows the same either way)."""

    def __init__(self, embedding: nn.Embedding, binarizer: WeightBinarizer) -> None:
        super().__init__()
        if embedding.max_norm is not None:
            raise ValueError("embeddings with max_norm cannot be binarized")
        self.embedding = embedding
        self.binarizer = binarizer

    @property
    def weight(self) -> torch.Tensor:
        return self.embedding.weight

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        w = self.binarizer(self.embedding.weight)
        return F.embedding(ids, w, self.embedding.padding_idx)


@register_module
class XnorLinear(CompressedModule):
    """``y = (sign(x)·β) @ (sign(W)·α)^T + b``: binary weights and binary activations
    (XNOR-Net, Rastegari et al. arXiv 1603.05279; ``act_scaled=False`` and an unscaled
    weight: BNN, Courbariaux et al. arXiv 1602.02830).

    ``centered``: ``y = (sign(x−μ)·β) @ Ŵ^T + μ·Ŵ·1 + b`` with ``μ`` the token's mean and ``β =
    mean|x−μ|``: the binarized part carries the token's variation, the mean is added back
    exactly through the weight's row sums (computed once from the stored weight, not
    stored). Artifacts written before this option have no ``centered`` argument and load
    uncentered, as they were computed."""

    module_name = "xnor_linear"

    def __init__(
        self,
        weight: BinaryTensor,
        bias: torch.Tensor | None,
        act_scaled: bool = True,
        centered: bool = False,
    ) -> None:
        super().__init__()
        if not isinstance(weight, BinaryTensor):
            raise ValueError(f"XnorLinear needs a binary weight, got {type(weight).__name__}")
        self.weight = weight
        self.out_features, self.in_features = int(weight.shape[0]), int(weight.shape[1])
        self.bias = nn.Parameter(bias) if bias is not None else None
        self.act_scaled = bool(act_scaled)
        self.centered = bool(centered)
        self._row_sums: torch.Tensor | None = None

    @classmethod
    def wrap(
        cls, linear: nn.Linear, weight: BinaryTensor, act_scaled: bool = True, centered: bool = False
    ) -> XnorLinear:
        b = linear.bias.detach().clone() if linear.bias is not None else None
        return cls(weight, b, act_scaled, centered)

    def args(self) -> dict[str, Any]:
        return {"bias": self.bias is not None, "act_scaled": self.act_scaled, "centered": self.centered}

    def row_sums(self) -> torch.Tensor:
        """``Ŵ·1`` (float32, one per output): the weight of a token's mean."""
        rs = self._row_sums
        if rs is None or rs.device != self.weight.device:
            rs = self._row_sums = self.weight.decode(torch.float32).sum(1)
        return rs

    @classmethod
    def build_empty(cls, args: dict[str, Any], formats: dict[str, CompressedTensor]) -> XnorLinear:
        w = formats["weight"]
        if not isinstance(w, BinaryTensor):
            raise ValueError(f"xnor_linear needs a binary weight, got format '{w.format_name}'")
        act_scaled = args.get("act_scaled", True)
        if not isinstance(act_scaled, bool):
            raise ValueError(f"xnor_linear: act_scaled must be true or false, got {act_scaled!r}")
        centered = args.get("centered", False)
        if not isinstance(centered, bool):
            raise ValueError(f"xnor_linear: centered must be true or false, got {centered!r}")
        return cls(w, torch.empty(w.shape[0]) if args.get("bias") else None, act_scaled, centered)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        x2 = x.reshape(-1, self.in_features)
        mu = None
        if self.centered:
            mu = x2.float().mean(-1, keepdim=True)
            x2 = (x2.float() - mu).to(x.dtype)
        y = kernels.run("linear_xnor", x2, self.weight, bias=self.bias, act_scaled=self.act_scaled)
        if mu is not None:
            y = (y.float() + mu * self.row_sums().to(y.device)).to(y.dtype)
        return y.reshape(*lead, self.out_features)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"bias={self.bias is not None}, act={'sign·mean|x|' if self.act_scaled else 'sign'}, "
            f"centered={self.centered}"
        )
