"""Vector (product) quantization of weights: k-means on ``dim``-dimensional sub-vectors of
weight rows, one codebook per layer, packed indices (the high-dimensional case of weight
sharing; Gong et al. 2014, arXiv 1412.6115)."""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import nn

from ...errors import ConfigError
from ...formats.pq import ProductQuantized
from ...primitives.kmeans import fit_kmeans_vectors
from ..base import (
    NON_NEGATIVE,
    CompressContext,
    MethodConfig,
    between,
    one_of,
    param,
    register,
    register_config,
    select,
)
from ..transform import Skip, transform_weights
from .kmeans import LAYER_TYPES, padding_rows

__all__ = ["ProductQuantConfig"]


@register_config
@dataclasses.dataclass(frozen=True)
class ProductQuantConfig(MethodConfig):
    """``2**bits`` centroids of ``dim`` weights each, one codebook per layer:
    ``bits / dim`` bits per weight."""

    name = "pq"
    notes_float_layers = True
    bits: int = param(8, between(1, 8))
    dim: int = param(4, between(2, 8))  # sub-vector size
    layers: tuple[str, ...] = param(("linear", "embedding", "conv"), one_of(*LAYER_TYPES), elements=True)
    include: tuple[str, ...] = ("*",)
    exclude: tuple[str, ...] = ()
    max_iter: int = param(25, NON_NEGATIVE)
    seed: int = param(0, NON_NEGATIVE)

    def validate(self) -> None:
        if "rnn" in self.layers:
            raise self.error("does not handle recurrent layers (rnn); use kmeans for them")

    def handled_layers(self) -> tuple[type[nn.Module], ...]:
        return (nn.Linear, nn.Embedding, *(t for layer in self.layers for t in LAYER_TYPES[layer]))


@register(ProductQuantConfig)
def _pq(model: nn.Module, config: ProductQuantConfig, ctx: CompressContext) -> nn.Module:
    types = tuple(t for layer in config.layers for t in LAYER_TYPES[layer])
    targets: list[tuple[str, Any]] = select(model, config, types)
    k = 2**config.bits

    def fits(w: torch.Tensor) -> bool:
        return w[0].numel() % config.dim == 0 and w.numel() // config.dim >= k

    if not any(fits(m.weight) for _, m in targets):
        raise ConfigError(
            "pq: no layer fits (rows must divide into sub-vectors, and hold >= 2**bits of them)"
        )

    def encode(name: str, mod: Any) -> ProductQuantized | Skip:
        if not fits(mod.weight):
            return Skip(f"row length {mod.weight[0].numel()}, {mod.weight.numel()} weights")
        w = mod.weight.detach().float()
        c, codes, _ = fit_kmeans_vectors(
            w.reshape(-1, config.dim), k, max_iter=config.max_iter, seed=config.seed
        )
        for r in padding_rows(mod):  # the padding row decodes to exact zeros
            per_row = w[0].numel() // config.dim
            j = int(c.norm(dim=1).argmin())
            c, codes = c.clone(), codes.clone()
            c[j] = 0.0
            codes[r * per_row : (r + 1) * per_row] = j
        return ProductQuantized(
            w.shape, codes=codes.to(torch.uint8), codebook=c, bits=config.bits, dim=config.dim
        )

    transform_weights(
        model, targets, encode, ctx=ctx, method=config.name, desc=f"pq {config.bits}-bit x {config.dim}"
    )
    return model
