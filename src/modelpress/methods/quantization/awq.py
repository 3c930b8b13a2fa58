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

import torch
from torch import nn

from ...errors import ConfigError
from ...formats.affine import AffineQuantized
from ...nn.decoded import wrap_decoded
from ...primitives.quant import choose_qparams, dequantize, quantize
from ..base import (
    CompressContext,
    MethodConfig,
    register,
    register_config,
    register_preset,
    replace_module,
    select_modules,
)
from .calibration import calibration_batches, group_for, log_group_fallbacks
from .gptq import rtn_modules, tied_weight_ids
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
    bits: int = 4
    group_size: int | None = 128
    strict_groups: bool = False
    symmetric: bool = False
    grid: int = 20
    max_rows: int = 2048
    n_samples: int = 64
    batch_size: int = 8
    embeddings: bool = True
    include: tuple[str, ...] = ("*",)
    exclude: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.bits, int) or not 2 <= self.bits <= 8:
            raise ConfigError(f"awq: bits must be an integer in 2..8, got {self.bits!r}")
        if self.group_size is not None and (not isinstance(self.group_size, int) or self.group_size < 1):
            raise ConfigError(f"awq: group_size must be a positive integer or null, got {self.group_size!r}")
        for f in ("grid", "max_rows", "n_samples", "batch_size"):
            v = getattr(self, f)
            if not isinstance(v, int) or v < 1:
                raise ConfigError(f"awq: {f} must be a positive integer, got {v!r}")


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
    types: tuple[type[nn.Module], ...] = (nn.Linear, nn.Embedding) if config.embeddings else (nn.Linear,)
    targets = list(select_modules(model, types, config.include, config.exclude))
    if not targets:
        raise ConfigError("awq: no layer matched include/exclude")
    log_group_fallbacks("awq", targets, config.group_size, config.strict_groups)
    tied = tied_weight_ids(model)
    rtn = [(n, m) for n, m in targets if not isinstance(m, nn.Linear) or id(m.weight) in tied]
    searched = {n: m for n, m in targets if (n, m) not in rtn}
    batches = calibration_batches(ctx.data, "awq", config.n_samples, config.batch_size)
    stats: dict[str, dict[str, object]] = {}
    per_batch = max(1, config.max_rows // len(batches))

    def observe(name: str, x: torch.Tensor) -> None:
        x = x.float()
        if not torch.isfinite(x).all():
            raise ValueError(f"awq: calibration inputs of {name} hold NaN or inf values")
        st = stats.setdefault(name, {"sum": torch.zeros(x.shape[1]), "n": 0, "rows": []})
        st["sum"] = st["sum"] + x.abs().sum(0)  # type: ignore[operator]
        st["n"] = int(st["n"]) + x.shape[0]  # type: ignore[call-overload]
        step = max(1, x.shape[0] // per_batch)
        st["rows"].append(x[::step][:per_batch].clone())  # type: ignore[union-attr]

    alphas: list[float] = []

    def quantize_layers(mods: dict[str, nn.Module]) -> None:
        for name, mod in mods.items():
            st = stats.pop(name)
            x = torch.cat(st["rows"])  # type: ignore[arg-type]
            mean = st["sum"] / max(1, int(st["n"]))  # type: ignore[operator, call-overload]
            g = group_for(mod.weight.shape[1], config.group_size)
            alpha, s, _ = awq_search(
                mod.weight, x, mean, config.bits, group_size=g, symmetric=config.symmetric, grid=config.grid
            )
            alphas.append(alpha)
            q, sc, z = _rtn(mod.weight.detach().float() * s, config.bits, config.symmetric, g)
            fmt = AffineQuantized.from_ints(mod.weight.shape, q, sc, z, config.bits, g, in_scale=s)
            replace_module(model, name, wrap_decoded(mod, fmt))

    if searched:
        quantize_by_blocks(
            model,
            searched,
            ctx.data,
            batches,
            observe,
            quantize_layers,
            desc=f"AWQ int{config.bits}",
            progress=ctx.progress,
        )
    rtn_modules(model, rtn, config.bits, config.group_size, config.symmetric)
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
