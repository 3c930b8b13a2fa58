"""Vector (product) quantization of weights: k-means on ``dim``-dimensional sub-vectors of
weight rows, one codebook per layer, packed indices (the high-dimensional case of weight
sharing; Gong et al. 2014, arXiv 1412.6115)."""

from __future__ import annotations

import dataclasses
import logging

import torch
from torch import nn
from tqdm.auto import tqdm

from ...errors import ConfigError
from ...formats.pq import ProductQuantized
from ...nn.decoded import wrap_decoded
from ...primitives.kmeans import fit_kmeans_vectors
from ..base import CompressContext, MethodConfig, register, register_config, replace_module, select_modules
from .kmeans import LAYER_TYPES

__all__ = ["ProductQuantConfig"]

log = logging.getLogger(__name__)


@register_config
@dataclasses.dataclass(frozen=True)
class ProductQuantConfig(MethodConfig):
    """``2**bits`` centroids of ``dim`` weights each, one codebook per layer:
    ``bits / dim`` bits per weight."""

    name = "pq"
    bits: int = 8
    dim: int = 4
    layers: tuple[str, ...] = ("linear", "embedding", "conv")
    include: tuple[str, ...] = ("*",)
    exclude: tuple[str, ...] = ()
    max_iter: int = 25
    seed: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.bits, int) or not 1 <= self.bits <= 8:
            raise ConfigError(f"pq: bits must be an integer in 1..8, got {self.bits!r}")
        if not isinstance(self.dim, int) or not 2 <= self.dim <= 8:
            raise ConfigError(f"pq: dim (sub-vector size) must be in 2..8, got {self.dim!r}")
        if isinstance(self.layers, str) or set(self.layers) - set(LAYER_TYPES):
            raise ConfigError(f"pq: layers must be a list from {', '.join(LAYER_TYPES)}, got {self.layers!r}")


@register(ProductQuantConfig)
def _pq(model: nn.Module, config: ProductQuantConfig, ctx: CompressContext) -> nn.Module:
    types = tuple(t for layer in config.layers for t in LAYER_TYPES[layer])
    k = 2**config.bits
    targets = []
    for n, m in select_modules(model, types, config.include, config.exclude):
        cols = m.weight[0].numel()
        if cols % config.dim or m.weight.numel() // config.dim < k:
            log.warning("pq: %s left uncompressed (row length %d, %d weights)", n, cols, m.weight.numel())
        else:
            targets.append((n, m))
    if not targets:
        raise ConfigError(
            "pq: no layer fits (rows must divide into sub-vectors, and hold >= 2**bits of them)"
        )
    shared: dict[int, ProductQuantized] = {}
    for name, mod in tqdm(
        targets, desc=f"pq {config.bits}-bit x {config.dim}", disable=not ctx.progress, leave=False
    ):
        fmt = shared.get(id(mod.weight))
        if fmt is None:
            w = mod.weight.detach().float()
            c, codes, _ = fit_kmeans_vectors(
                w.reshape(-1, config.dim), k, max_iter=config.max_iter, seed=config.seed
            )
            fmt = ProductQuantized(
                w.shape, codes=codes.to(torch.uint8), codebook=c, bits=config.bits, dim=config.dim
            )
            shared[id(mod.weight)] = fmt
        replace_module(model, name, wrap_decoded(mod, fmt))
    return model
