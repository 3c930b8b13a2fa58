"""AWQ: activation-aware weight quantization (Lin et al., arXiv 2306.00978).

A few input channels carry much larger activations than the rest, and the weights that
multiply them matter most. AWQ scales those weight columns up before rounding (so they
round more finely) and divides them back after: ``Ŵ = Q(W·diag(s))·diag(s)⁻¹`` with
``s = mean|x|^α`` per input channel, ``α ∈ [0, 1]`` searched on a grid per layer to
minimise the output error ``‖X(Ŵ − W)ᵀ‖`` on calibration inputs (α = 0 is plain RTN, so
the search never does worse than RTN on the calibration sample).

The paper folds ``1/s`` into the preceding LayerNorm or Linear; modelpress stores ``s``
with the weight (``in_scale`` of the ``affine`` format, 4 bytes per input column) and
divides the decoded columns, which works for every layer whatever precedes it, lets q/k/v
each have their own ``s``, and costs nothing at run time beyond decoding. Calibration goes
block by block like GPTQ (earlier blocks already quantized). Embeddings, and weights tied
to them, are rounded to nearest.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import torch
from torch import nn

from ...formats.affine import AffineQuantized
from ...primitives.quant import choose_qparams, dequantize, quantize
from ..base import (
    POSITIVE,
    CompressContext,
    MethodConfig,
    between,
    param,
    register,
    register_config,
    register_preset,
)
from ..transform import transform_weights
from .calibration import calibrated_split, group_for, rtn_encode
from .sequential import quantize_by_blocks

__all__ = ["AWQConfig", "awq_search"]

log = logging.getLogger(__name__)


@register_config
@dataclasses.dataclass(frozen=True)
class AWQConfig(MethodConfig):
    """Activation-aware scaling searched per Linear, then round-to-nearest.

    grid: number of α values tried in [0, 1]. max_rows: calibration input rows (tokens)
    kept per layer for the search.
    """

    name = "awq"
    notes_float_layers = True
    bits: int = param(4, between(2, 8))
    group_size: int | None = param(128, POSITIVE)
    strict_groups: bool = False
    symmetric: bool = False
    grid: int = param(20, POSITIVE)
    max_rows: int = param(2048, POSITIVE)
    n_samples: int = param(64, POSITIVE)
    batch_size: int = param(8, POSITIVE)
    embeddings: bool = True
    include: tuple[str, ...] = ("*",)
    exclude: tuple[str, ...] = ()


def _rtn(w: torch.Tensor, bits: int, symmetric: bool, g: int | None):
    s, z = choose_qparams(w, bits, symmetric=symmetric, group_size=g)
    return quantize(w, s, z, bits, group_size=g), s, z


def awq_search(
    w: torch.Tensor,
    x: torch.Tensor,
    act_mean: torch.Tensor,
    bits: int,
    *,
    group_size: int | None,
    symmetric: bool,
    grid: int = 20,
) -> tuple[float, torch.Tensor, float]:
    """Best ``(alpha, s, error)`` for weight ``w (rows, cols)`` on inputs ``x (n, cols)``."""
    w = w.detach().float()
    ref = x @ w.T
    best: tuple[float, torch.Tensor, float] | None = None
    base = act_mean.float().clamp_min(1e-8)
    for i in range(grid + 1):
        alpha = i / grid
        s = base.pow(alpha)
        s = s / (s.max() * s.min()).sqrt()
        q, sc, z = _rtn(w * s, bits, symmetric, group_size)
        w_hat = dequantize(q, sc, z, group_size=group_size) / s
        err = float((x @ w_hat.T - ref).pow(2).mean())
        if best is None or err < best[2]:
            best = (alpha, s, err)
    assert best is not None
    return best


@register(AWQConfig)
def _awq(model: nn.Module, config: AWQConfig, ctx: CompressContext) -> nn.Module:
    searched, rtn, data, batches = calibrated_split(model, config, ctx)
    abs_sum: dict[str, torch.Tensor] = {}  # (cols,) sum of |x| over the inputs seen
    count: dict[str, int] = {}
    rows: dict[str, list[torch.Tensor]] = {}  # a strided sample of input rows for the search
    per_batch = max(1, config.max_rows // len(batches))

    def observe(name: str, x: torch.Tensor) -> None:
        x = x.float()
        if not torch.isfinite(x).all():
            raise ValueError(f"awq: calibration inputs of {name} hold NaN or inf values")
        abs_sum[name] = abs_sum.get(name, torch.zeros(x.shape[1], device=x.device)) + x.abs().sum(0)
        count[name] = count.get(name, 0) + x.shape[0]
        step = max(1, x.shape[0] // per_batch)
        rows.setdefault(name, []).append(x[::step][:per_batch].clone())

    alphas: list[float] = []

    def encode(name: str, mod: Any) -> AffineQuantized:
        x = torch.cat(rows.pop(name))
        mean = abs_sum.pop(name) / max(1, count.pop(name))
        g = group_for(mod.weight.shape[1], config.group_size)
        alpha, s, _ = awq_search(
            mod.weight, x, mean, config.bits, group_size=g, symmetric=config.symmetric, grid=config.grid
        )
        alphas.append(alpha)
        q, sc, z = _rtn(mod.weight.detach().float() * s, config.bits, config.symmetric, g)
        return AffineQuantized.from_ints(mod.weight.shape, q, sc, z, config.bits, g, in_scale=s)

    desc = f"AWQ int{config.bits}"
    quantize_by_blocks(model, searched, data, batches, observe, encode, ctx, method=config.name, desc=desc)
    transform_weights(
        model, rtn, rtn_encode(config), ctx=ctx, method=config.name, desc=f"int{config.bits} RTN"
    )
    if alphas:
        log.info(
            "awq: %d layers searched (alpha mean %.2f, %d at 0 = RTN), %d rounded to nearest",
            len(alphas),
            sum(alphas) / len(alphas),
            sum(a == 0 for a in alphas),
            len(rtn),
        )
    return model


@register_preset("awq-4bit", "AWQ INT4, asymmetric, groups of 128 (calibrated)", "quantization")
def _a4() -> list[MethodConfig]:
    return [AWQConfig(bits=4, group_size=128)]
