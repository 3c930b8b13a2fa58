"""Modules that hold a compressed weight and compute through the kernel seam (``kernels``),
whose reference kernels decode it at each call.

Format-agnostic: any ``CompressedTensor`` (a codebook, packed low-bit integers ...) works.
Memory holds only the compressed fields; the dense weight exists only during the call
(embeddings decode just the looked-up rows). Decoding is differentiable with respect to
float fields (e.g. a codebook with ``requires_grad``), which is how centroid fine-tuning
trains shared values: the gradient of a centroid is the sum of the gradients of the weights
that share it.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .. import kernels
from ..formats.base import CompressedTensor
from .base import CompressedModule, register_module

__all__ = ["DecodedConv", "DecodedEmbedding", "DecodedLinear", "wrap_decoded"]


@register_module
class DecodedLinear(CompressedModule):
    module_name = "decoded_linear"

    def __init__(self, weight: CompressedTensor, bias: torch.Tensor | None) -> None:
        super().__init__()
        self.weight = weight
        self.out_features, self.in_features = int(weight.shape[0]), int(weight.shape[1])
        self.bias = nn.Parameter(bias) if bias is not None else None

    @classmethod
    def wrap(cls, linear: nn.Linear, weight: CompressedTensor) -> DecodedLinear:
        b = linear.bias.detach().clone() if linear.bias is not None else None
        return cls(weight, b)

    def args(self) -> dict[str, Any]:
        return {"bias": self.bias is not None}

    @classmethod
    def build_empty(cls, args: dict[str, Any], formats: dict[str, CompressedTensor]) -> DecodedLinear:
        w = formats["weight"]
        return cls(w, torch.empty(w.shape[0]) if args.get("bias") else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return kernels.linear(x, self.weight, self.bias)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"
        )


@register_module
class DecodedEmbedding(CompressedModule):
    module_name = "decoded_embedding"

    def __init__(self, weight: CompressedTensor, padding_idx: int | None = None) -> None:
        super().__init__()
        self.weight = weight
        self.num_embeddings, self.embedding_dim = int(weight.shape[0]), int(weight.shape[1])
        self.padding_idx = padding_idx

    @classmethod
    def wrap(cls, emb: nn.Embedding, weight: CompressedTensor) -> DecodedEmbedding:
        return cls(weight, emb.padding_idx)

    def args(self) -> dict[str, Any]:
        return {"padding_idx": self.padding_idx}

    @classmethod
    def build_empty(cls, args: dict[str, Any], formats: dict[str, CompressedTensor]) -> DecodedEmbedding:
        return cls(formats["weight"], args.get("padding_idx"))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return kernels.embedding(ids, self.weight)

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, padding_idx={self.padding_idx}"


@register_module
class DecodedConv(CompressedModule):
    """Conv1d / Conv2d with a compressed kernel ``(out, in/groups, *kernel)``."""

    module_name = "decoded_conv"

    def __init__(self, weight: CompressedTensor, bias: torch.Tensor | None, conv: dict[str, Any]) -> None:
        super().__init__()
        self.weight = weight
        self.bias = nn.Parameter(bias) if bias is not None else None
        self.conv = dict(conv)
        if len(weight.shape) not in (3, 4, 5):
            raise ValueError(f"a conv kernel has 3 to 5 dims, got shape {tuple(weight.shape)}")

    @classmethod
    def wrap(cls, conv: nn.Conv1d | nn.Conv2d | nn.Conv3d, weight: CompressedTensor) -> DecodedConv:
        if getattr(conv, "padding_mode", "zeros") != "zeros":
            raise ValueError("only zero-padded convolutions can be compressed")
        args = {
            "stride": list(conv.stride),
            "padding": conv.padding if isinstance(conv.padding, str) else list(conv.padding),
            "dilation": list(conv.dilation),
            "groups": conv.groups,
        }
        b = conv.bias.detach().clone() if conv.bias is not None else None
        return cls(weight, b, args)

    def args(self) -> dict[str, Any]:
        return {"bias": self.bias is not None, "conv": self.conv}

    @classmethod
    def build_empty(cls, args: dict[str, Any], formats: dict[str, CompressedTensor]) -> DecodedConv:
        w = formats["weight"]
        return cls(w, torch.empty(w.shape[0]) if args.get("bias") else None, args["conv"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = self.conv
        pad = c["padding"] if isinstance(c["padding"], str) else tuple(c["padding"])
        return kernels.conv(
            x, self.weight, self.bias, tuple(c["stride"]), pad, tuple(c["dilation"]), c["groups"]
        )


def wrap_decoded(module: nn.Module, weight: CompressedTensor) -> CompressedModule:
    """The decoded counterpart of a Linear, Embedding or Conv module holding ``weight``."""
    if isinstance(module, nn.Linear):
        return DecodedLinear.wrap(module, weight)
    if isinstance(module, nn.Embedding):
        return DecodedEmbedding.wrap(module, weight)
    if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        return DecodedConv.wrap(module, weight)
    raise TypeError(f"no decoded module for {type(module).__name__}")
