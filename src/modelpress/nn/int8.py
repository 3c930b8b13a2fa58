"""INT8 modules: dynamic-activation Linear (W8A8) and weight-only Embedding.

``Int8DynamicLinear`` quantizes each input row (token) to INT8 on the fly, multiplies with
per-output-channel INT8 weights and rescales, through the ``linear_a8`` kernel op
(``kernels/int8.py``: ``torch._int_mm``, an int8 x int8 -> int32 GEMM on CPU and CUDA).
Where ``_int_mm`` cannot run (CUDA with M <= 16 or K, N not multiples of 8), the reference
kernel computes the float matmul on decoded weights, the same result up to float rounding.

``Int8SmoothLinear`` is the dynamic layer with SmoothQuant's per-input-channel divisor
applied to its input at run time (Xiao et al., arXiv 2211.10438). ``Int8StaticLinear``
quantizes activations with one scale (and zero point) fixed at calibration time (Jacob et
al., arXiv 1712.05877) instead of per token at run time.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .. import kernels
from ..formats.affine import AffineQuantized
from ..formats.base import CompressedTensor
from ..kernels import int_mm_available
from ..primitives.activation import act_qrange, quantize_act_int8
from .base import CompressedModule, register_module

__all__ = ["Int8DynamicLinear", "Int8Embedding", "Int8SmoothLinear", "Int8StaticLinear", "int_mm_available"]


@register_module
class Int8DynamicLinear(CompressedModule):
    """y = (q(x) @ Wq^T) * s_x * s_w + b, with per-token s_x and per-channel s_w."""

    module_name = "int8_dynamic_linear"

    def __init__(self, weight: AffineQuantized, bias: torch.Tensor | None) -> None:
        super().__init__()
        plain = weight.group_size is None and weight.in_scale is None
        if weight.bits != 8 or not weight.symmetric or not plain:
            raise ValueError("Int8DynamicLinear needs a symmetric per-channel 8-bit weight (no input scale)")
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
        if x.dim() == 2 and x.dtype == torch.float32:  # (fewer calls per layer at one row)
            return kernels.linear_a8(x, self.weight, self.bias)
        y = kernels.linear_a8(x.reshape(-1, self.in_features), self.weight, self.bias)
        if y.dtype != x.dtype:
            y = y.to(x.dtype)
        return y.view(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"
        )


@register_module
class Int8SmoothLinear(Int8DynamicLinear):
    """SmoothQuant W8A8: ``y = Int8DynamicLinear(x / s)`` with the weight already ``W diag(s)``.

    Used where the divisor cannot be folded into a preceding norm (post-LN BERT, the inputs
    of attention-output and down projections). A separate module name keeps the artifacts of
    plain ``Int8DynamicLinear`` layers unchanged.
    """

    module_name = "int8_smooth_linear"
    smooth: torch.Tensor

    def __init__(self, weight: AffineQuantized, bias: torch.Tensor | None, smooth: torch.Tensor) -> None:
        super().__init__(weight, bias)
        if smooth.shape != (self.in_features,):
            raise ValueError(
                f"smoothing factors must have shape ({self.in_features},), got {tuple(smooth.shape)}"
            )
        self.register_buffer("smooth", smooth.float())  # (in,) s_j: the input is divided by it

    @classmethod
    def from_float(  # type: ignore[override]
        cls, linear: nn.Linear, weight: AffineQuantized | None = None, *, smooth: torch.Tensor
    ) -> Int8SmoothLinear:
        """``linear`` holds the original weight W; it is stored as INT8 ``W diag(s)``."""
        s = smooth.detach().float().to(linear.weight.device)
        w = (
            weight
            if weight is not None
            else AffineQuantized.encode(linear.weight.detach().float() * s, bits=8)
        )
        b = linear.bias.detach().float().clone() if linear.bias is not None else None
        return cls(w, b, s)

    @classmethod
    def build_empty(cls, args: dict[str, Any], formats: dict[str, CompressedTensor]) -> Int8SmoothLinear:
        w = formats["weight"]
        assert isinstance(w, AffineQuantized)
        bias = torch.empty(w.shape[0]) if args.get("bias") else None
        return cls(w, bias, torch.empty(w.shape[1]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x / self.smooth.to(x.dtype))


@register_module
class Int8StaticLinear(CompressedModule):
    """Static W8A8: ``y = (q(x) - z_x) @ Wq^T * s_x * s_w + b`` with one activation scale
    ``s_x`` and zero point ``z_x`` fixed at calibration, per-channel (or per-tensor) ``s_w``.

    ``q(x) = clamp(round(x / s_x) + z_x)`` in [-127, 127] (symmetric, ``z_x = 0``) or
    [-128, 127] (asymmetric). The zero point is taken out of the int32 accumulator with
    ``z_x * rowsum(Wq)``, so the GEMM itself stays int8 x int8.
    """

    module_name = "int8_static_linear"
    act_scale: torch.Tensor
    act_zero_point: torch.Tensor

    def __init__(
        self,
        weight: AffineQuantized,
        bias: torch.Tensor | None,
        act_scale: torch.Tensor,
        act_zero_point: torch.Tensor,
        act_symmetric: bool = True,
    ) -> None:
        super().__init__()
        if weight.bits != 8 or not weight.symmetric or weight.group_size is not None:
            raise ValueError("Int8StaticLinear needs a symmetric per-channel 8-bit weight")
        self.weight = weight
        self.out_features, self.in_features = weight.shape
        self.bias = nn.Parameter(bias) if bias is not None else None
        self.act_symmetric = bool(act_symmetric)
        self.register_buffer("act_scale", act_scale.reshape(1).float())  # (1,) s_x
        self.register_buffer("act_zero_point", act_zero_point.reshape(1).to(torch.int32))  # (1,) z_x

    @classmethod
    def from_float(
        cls,
        linear: nn.Linear,
        act_scale: float,
        act_zero_point: int = 0,
        *,
        act_symmetric: bool = True,
        weight: AffineQuantized | None = None,
    ) -> Int8StaticLinear:
        w = weight if weight is not None else AffineQuantized.encode(linear.weight.detach(), bits=8)
        b = linear.bias.detach().float().clone() if linear.bias is not None else None
        dev = linear.weight.device
        return cls(
            w,
            b,
            torch.tensor([act_scale], dtype=torch.float32, device=dev),
            torch.tensor([act_zero_point], dtype=torch.int32, device=dev),
            act_symmetric,
        )

    def args(self) -> dict[str, Any]:
        return {"bias": self.bias is not None, "act_symmetric": self.act_symmetric}

    @classmethod
    def build_empty(cls, args: dict[str, Any], formats: dict[str, CompressedTensor]) -> Int8StaticLinear:
        w = formats["weight"]
        assert isinstance(w, AffineQuantized)
        bias = torch.empty(w.shape[0]) if args.get("bias") else None
        return cls(
            w,
            bias,
            torch.empty(1),
            torch.empty(1, dtype=torch.int32),
            bool(args.get("act_symmetric", True)),
        )

    def quantize_input(self, x2: torch.Tensor) -> torch.Tensor:
        """(tokens, in) float -> (tokens, in) int8 with the static scale and zero point."""
        return quantize_act_int8(x2, self.act_scale, self.act_zero_point, self.act_symmetric)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        xq = self.quantize_input(x.reshape(-1, self.in_features))
        y = kernels.linear_a8_static(
            xq, self.weight, self.bias, self.act_scale, self.act_zero_point, self.act_symmetric
        )
        return y.to(x.dtype).reshape(*lead, self.out_features)

    def extra_repr(self) -> str:
        lo, hi = act_qrange(self.act_symmetric)
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"bias={self.bias is not None}, act=int8[{lo},{hi}] static"
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
        return kernels.embedding(ids, self.weight)  # int8 rows times their per-row scale

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, padding_idx={self.padding_idx}"
