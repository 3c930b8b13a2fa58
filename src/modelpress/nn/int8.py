"""INT8 modules: dynamic-activation Linear (W8A8) and weight-only Embedding.

``Int8DynamicLinear`` quantizes each input row (token) to INT8 on the fly, multiplies with
per-output-channel INT8 weights through ``torch._int_mm`` (an int8 x int8 -> int32 GEMM that
torch provides on CPU and CUDA) and rescales. Where ``_int_mm`` cannot run (CUDA with
M <= 16 or K, N not multiples of 8), it falls back to the float matmul on decoded weights,
which gives the same result up to float rounding.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..formats.affine import AffineQuantized
from ..formats.base import CompressedTensor
from ..primitives.quant import quantize_per_token_int8
from .base import CompressedModule, register_module

__all__ = ["Int8DynamicLinear", "Int8Embedding", "int_mm_available"]


def int_mm_available(m: int, k: int, n: int, device: torch.device) -> bool:
    if device.type == "cpu":
        return True
    if device.type == "cuda":
        return m > 16 and k % 8 == 0 and n % 8 == 0
    return False


@register_module
class Int8DynamicLinear(CompressedModule):
    """y = (q(x) @ Wq^T) * s_x * s_w + b, with per-token s_x and per-channel s_w."""

    module_name = "int8_dynamic_linear"

    def __init__(self, weight: AffineQuantized, bias: torch.Tensor | None) -> None:
        super().__init__()
        if weight.bits != 8 or not weight.symmetric or weight.group_size is not None:
            raise ValueError("Int8DynamicLinear needs a symmetric per-channel 8-bit weight")
        self.weight = weight
        self.out_features, self.in_features = weight.shape
        self.bias = nn.Parameter(bias) if bias is not None else None

    @classmethod
    def from_float(cls, linear: nn.Linear, weight: AffineQuantized | None = None) -> Int8DynamicLinear:
        w = weight if weight is not None else AffineQuantized.encode(linear.weight.detach(), bits=8)
        b = linear.bias.detach().float().clone() if linear.bias is not None else None
        return cls(w, b)

    def args(self) -> dict[str, Any]:
        return {"bias": self.bias is not None}

    @classmethod
    def build_empty(cls, args: dict[str, Any], formats: dict[str, CompressedTensor]) -> Int8DynamicLinear:
        w = formats["weight"]
        assert isinstance(w, AffineQuantized)
        bias = torch.empty(w.shape[0]) if args.get("bias") else None
        return cls(w, bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        x2 = x.reshape(-1, self.in_features)
        m = x2.shape[0]
        if m == 0 or not int_mm_available(m, self.in_features, self.out_features, x.device):
            y = F.linear(x2.float(), self.weight.decode(), self.bias)
            return y.to(x.dtype).reshape(*lead, self.out_features)
        xq, xs = quantize_per_token_int8(x2)
        # (m, in) int8 @ (in, out) int8 -> (m, out) int32; the transposed view is what the
        # CPU kernel wants (column-major B), no copy needed.
        acc = torch._int_mm(xq, self.weight.qdata.t())
        # rescale: (m, out) int32 * (m, 1) -> float32 in one pass, then * (1, out) [+ bias]
        y = torch.mul(acc, xs).mul_(self.weight.scale.reshape(1, -1))
        if self.bias is not None:
            y.add_(self.bias)
        return y.to(x.dtype).reshape(*lead, self.out_features)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"
        )


@register_module
class Int8Embedding(CompressedModule):
    """Weight-only INT8 embedding: gathers int8 rows and their per-row scales."""

    module_name = "int8_embedding"

    def __init__(self, weight: AffineQuantized, padding_idx: int | None = None) -> None:
        super().__init__()
        if weight.group_size is not None or not weight.symmetric:
            raise ValueError("Int8Embedding needs a symmetric per-row weight")
        self.weight = weight
        self.num_embeddings, self.embedding_dim = weight.shape
        self.padding_idx = padding_idx

    @classmethod
    def from_float(cls, emb: nn.Embedding) -> Int8Embedding:
        return cls(AffineQuantized.encode(emb.weight.detach(), bits=8), emb.padding_idx)

    def args(self) -> dict[str, Any]:
        return {"padding_idx": self.padding_idx}

    @classmethod
    def build_empty(cls, args: dict[str, Any], formats: dict[str, CompressedTensor]) -> Int8Embedding:
        w = formats["weight"]
        assert isinstance(w, AffineQuantized)
        return cls(w, args.get("padding_idx"))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        rows = F.embedding(ids, self.weight.qdata).to(torch.float32)  # (..., dim)
        return rows.mul_(F.embedding(ids, self.weight.scale))  # (..., 1) per-row scale

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, padding_idx={self.padding_idx}"
