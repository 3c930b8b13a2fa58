"""Non-uniform quantization with fixed rules, stored in the clustering ``codebook`` format.

- **NF4** (Dettmers et al., "QLoRA", arXiv 2305.14314): 16 levels at quantiles of a normal
  distribution (an exact zero included), shared by the whole tensor; each group of
  ``group_size`` weights is divided by its absolute maximum and rounded to the nearest
  level. Stored as a ``group-scaled`` codebook: 4-bit codes, one 16-entry codebook, one
  scale per group.
- **quantile** ("store each weight as its nearest percentile"): per output channel, the
  ``2**bits`` values at the centres of equal-mass bins of that row's weights
  (quantiles ``(i + ½)/k``), each weight rounded to the nearest. Stored as a ``channel``
  codebook. No iterations, unlike k-means (``kmeans`` with ``init: quantile`` starts there
  and then runs Lloyd).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import nn

from ...errors import ConfigError
from ...formats.codebook import Codebook
from ..base import (
    POSITIVE,
    CompressContext,
    MethodConfig,
    between,
    one_of,
    param,
    register,
    register_config,
    register_preset,
)
from ..transform import rnn_targets, transform_rnn_weights, transform_weights
from .calibration import group_for, quant_targets

__all__ = ["NonUniformConfig", "nearest_level", "nf4_levels", "quantile_levels"]

KINDS = ("nf4", "quantile")


def nf4_levels(offset: float = 0.9677083) -> torch.Tensor:
    """The 16 NormalFloat-4 levels in [-1, 1] (QLoRA's construction: 8 positive and 7
    negative normal quantiles between ``offset`` and ½, plus zero, scaled to max 1)."""
    normal = torch.distributions.Normal(0.0, 1.0)
    pos = normal.icdf(torch.linspace(offset, 0.5, 9, dtype=torch.float64)[:-1])
    neg = -normal.icdf(torch.linspace(offset, 0.5, 8, dtype=torch.float64)[:-1])
    v = torch.cat([pos, neg, torch.zeros(1, dtype=torch.float64)]).sort().values
    return (v / v.max()).to(torch.float32)


def quantile_levels(rows: torch.Tensor, k: int) -> torch.Tensor:
    """``(rows, k)``: the values at quantiles ``(i + ½)/k`` of each row."""
    q = (torch.arange(k, dtype=torch.float32, device=rows.device) + 0.5) / k
    srt = rows.float().sort(dim=1).values
    n = srt.shape[1]
    pos = q * (n - 1)
    lo = pos.floor().long()
    hi = pos.ceil().long()
    frac = (pos - lo.float()).unsqueeze(0)
    return srt[:, lo] * (1 - frac) + srt[:, hi] * frac  # linear interpolation, as torch.quantile


def nearest_level(values: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
    """Index of the nearest of the sorted ``levels`` for each value, row by row.

    ``values (rows, n)`` with ``levels (rows, k)`` or ``(1, k)`` (shared); uint8 codes.
    """
    mids = (levels[:, 1:] + levels[:, :-1]) / 2
    if mids.shape[0] == 1 and values.shape[0] != 1:
        mids = mids.expand(values.shape[0], -1)
    return torch.searchsorted(mids.contiguous(), values.contiguous()).to(torch.uint8)


@register_config
@dataclasses.dataclass(frozen=True)
class NonUniformConfig(MethodConfig):
    """NF4 (``kind: nf4``, groups of ``group_size`` absmax-scaled) or per-channel quantile
    codebooks (``kind: quantile``, ``bits`` 1..8)."""

    name = "nonuniform"
    notes_float_layers = True
    kind: str = param("nf4", one_of(*KINDS))
    bits: int = param(4, between(1, 8))
    group_size: int = param(64, POSITIVE)
    strict_groups: bool = False
    codebook_dtype: str = param("float16", one_of("float32", "float16"))
    embeddings: bool = True
    include: tuple[str, ...] = ("*",)
    exclude: tuple[str, ...] = ()

    def validate(self) -> None:
        if self.kind == "nf4" and self.bits != 4:
            raise self.error(f"nf4 has 4 bits, got bits={self.bits!r}")

    def handled_layers(self) -> tuple[type[nn.Module], ...]:
        return (nn.Linear, nn.Embedding, nn.RNNBase)


def encode_nf4(w: torch.Tensor, group_size: int, dtype: str = "float16") -> Codebook:
    rows, cols = w.shape
    g = group_for(cols, group_size)
    assert g is not None
    groups = w.detach().float().reshape(-1, g)
    scale = groups.abs().amax(1, keepdim=True).clamp_min(1e-12)
    levels = nf4_levels().unsqueeze(0).to(w.device)
    codes = nearest_level((groups / scale).reshape(rows, cols), levels)
    if dtype == "float16":
        scale = scale.half()
    return Codebook.from_codes(
        w.shape,
        codes,
        levels,
        bits=4,
        granularity="group-scaled",
        group_size=g,
        scale=scale,
        codebook_dtype=dtype,
    )


def encode_quantile(w: torch.Tensor, bits: int, dtype: str = "float16") -> Codebook:
    rows = w.detach().float().reshape(w.shape[0], -1)
    k = 2**bits
    if rows.shape[1] < k:
        raise ConfigError(f"nonuniform: rows of {rows.shape[1]} weights cannot fill {k} quantile levels")
    levels = quantile_levels(rows, k)
    if dtype == "float16":
        levels = levels.half().float()  # round first, so codes point at the stored values
    codes = nearest_level(rows, levels)
    return Codebook.from_codes(w.shape, codes, levels, bits=bits, granularity="channel", codebook_dtype=dtype)


@register(NonUniformConfig)
def _nonuniform(model: nn.Module, config: NonUniformConfig, ctx: CompressContext) -> nn.Module:
    targets = quant_targets(model, config, grouped=config.kind == "nf4")

    def encode(name: str, mod: Any) -> Codebook:
        w = mod.weight.detach()
        if not torch.isfinite(w).all():
            raise ConfigError(f"nonuniform: {name} holds NaN or inf weights")
        if config.kind == "nf4":
            return encode_nf4(w, config.group_size, config.codebook_dtype)
        return encode_quantile(w, config.bits, config.codebook_dtype)

    transform_weights(model, targets, encode, ctx=ctx, method=config.name, desc=config.kind)
    transform_rnn_weights(model, rnn_targets(model, config), encode, ctx=ctx, method=config.name)
    return model


@register_preset("nf4", "NormalFloat-4 codebook, absmax scale (fp16) per 64 weights (QLoRA)", "quantization")
def _nf4() -> list[MethodConfig]:
    return [NonUniformConfig(kind="nf4", group_size=64)]


@register_preset("quantile-4bit", "4-bit per-channel quantile codebook (nearest percentile)", "quantization")
def _q4() -> list[MethodConfig]:
    return [NonUniformConfig(kind="quantile", bits=4)]
