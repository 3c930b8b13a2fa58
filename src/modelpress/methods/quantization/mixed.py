"""Mixed-precision weight-only quantization: bits per layer from measured sensitivities.

1. Sensitivity: for each quantizable weight (Linear, Embedding; a tied weight counts once)
   and each candidate bit width, the increase of the task loss on a few calibration batches
   when only that weight is rounded to nearest (``AffineQuantized.encode``), everything
   else in float. Made non-increasing in the bit width and clipped at 0 (measurement noise).
2. Allocation: a multiple-choice knapsack (dynamic programming over the stored size, which
   is discretised upward so the budget always holds) picks one width per weight to
   minimise the summed loss increase under a size budget (average stored bits per weight
   over the quantized weights, scales and zero points included, as the format stores
   them), or the smallest size whose summed loss increase stays within a tolerance.
3. The weights are stored in the ``affine`` format as by ``weight-only``; the chosen widths
   are logged as a table and recorded in the model's recipe (``assignment``), so re-running
   the saved recipe reproduces them without data.

Additivity of per-layer sensitivities is the usual approximation (HAQ, Wang et al. arXiv
1811.08886; HAWQ, Dong et al. arXiv 1905.03696, which ranks layers by a Hessian estimate
of the same loss increase). Embeddings and the first and last layers take part in the
search like any other weight (the knapsack counts their size); ``pin`` fixes the width of
chosen layers instead (e.g. ``{"*embeddings*": 8}``), still counted in the budget.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from ...data.calibration import CalibrationData, calibration_batches
from ...errors import ConfigError
from ...formats.affine import AffineQuantized
from ..base import (
    NON_NEGATIVE,
    POSITIVE,
    Check,
    CompressContext,
    MethodConfig,
    between,
    matches,
    param,
    register,
    register_config,
    register_preset,
    replace_module,
)
from ..transform import transform_weights
from .calibration import group_for, quant_targets

__all__ = [
    "LayerSensitivity",
    "MixedPrecisionConfig",
    "choose_bits",
    "measure_sensitivity",
    "quantizable_weights",
]

log = logging.getLogger(__name__)


def _pairs(value: Any, field: str) -> tuple[tuple[str, int], ...]:
    """``{name: bits}`` or ``[[name, bits], ...]`` -> ``((name, bits), ...)``."""
    items = value.items() if isinstance(value, Mapping) else value
    try:
        out = tuple((str(k), v) for k, v in items)
    except (TypeError, ValueError):
        raise ConfigError(f"mixed-precision: {field} must map layer names to bits, got {value!r}") from None
    for k, v in out:
        if isinstance(v, bool) or not isinstance(v, int) or not 2 <= v <= 8:
            raise ConfigError(
                f"mixed-precision: {field} gives '{k}' {v!r} bits; bits must be integers in 2..8"
            )
    return out


@register_config
@dataclasses.dataclass(frozen=True)
class MixedPrecisionConfig(MethodConfig):
    """Per-layer bit widths for weight-only RTN, chosen from measured sensitivities.

    candidate_bits: widths to choose from. avg_bits: size budget, average *stored* bits per
    weight over the quantized weights (scales and zero points included: int4 in groups of
    128 costs 4.375). max_loss_increase: instead of a budget, the smallest model whose
    summed per-layer loss increase stays below this. Exactly one of the two.
    group_size / symmetric / embeddings / include / exclude as in ``weight-only``.
    pin: ``{pattern: bits}`` fixed widths (not searched, counted in the budget).
    n_samples / batch_size: calibration sequences from the task's train split.
    assignment: ``{layer: bits}`` chosen widths; filled in by the method and recorded in the
    recipe; when given, it is applied as is (no data needed).
    """

    name = "mixed-precision"
    notes_float_layers = True
    candidate_bits: tuple[int, ...] = param((2, 3, 4, 8), between(2, 8), elements=True)
    avg_bits: float | None = param(4.0, Check(lambda v: 0 < v < math.inf, "a positive finite {noun}"))
    max_loss_increase: float | None = param(None, NON_NEGATIVE)
    group_size: int | None = param(128, POSITIVE)
    strict_groups: bool = False
    symmetric: bool = False
    embeddings: bool = True
    pin: tuple[tuple[str, int], ...] = ()
    n_samples: int = param(128, POSITIVE)
    batch_size: int = param(32, POSITIVE)
    include: tuple[str, ...] = ("*",)
    exclude: tuple[str, ...] = ()
    assignment: tuple[tuple[str, int], ...] = ()

    def validate(self) -> None:
        if not self.candidate_bits:
            raise self.error("candidate_bits must be a non-empty list of integers in [2, 8]")
        object.__setattr__(self, "candidate_bits", tuple(sorted(set(self.candidate_bits))))
        object.__setattr__(self, "pin", _pairs(self.pin, "pin"))
        object.__setattr__(self, "assignment", _pairs(self.assignment, "assignment"))
        if (self.avg_bits is None) == (self.max_loss_increase is None):
            raise self.error(
                "give exactly one of avg_bits (a size budget) and max_loss_increase (a quality "
                "tolerance); set the other to null"
            )

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        out["pin"] = dict(self.pin)  # readable YAML / JSON: {layer: bits}
        out["assignment"] = dict(self.assignment)
        return out


# -- measurement ---------------------------------------------------------------------------


@dataclasses.dataclass
class LayerSensitivity:
    """One quantizable weight: the modules holding it, its size, and per candidate width the
    loss increase when only it is quantized and the bytes its format stores."""

    name: str  # the first module holding the weight (the key of ``assignment``)
    modules: list[str]
    numel: int
    group_size: int | None
    loss_increase: dict[int, float] = dataclasses.field(default_factory=dict)
    nbytes: dict[int, int] = dataclasses.field(default_factory=dict)


def quantizable_weights(model: nn.Module, config: MixedPrecisionConfig) -> list[LayerSensitivity]:
    """The selected weights, one entry per distinct weight tensor (tied layers share one)."""
    by_weight: dict[int, LayerSensitivity] = {}
    for name, mod in quant_targets(model, config):
        entry = by_weight.get(id(mod.weight))
        if entry is None:
            w = mod.weight
            by_weight[id(w)] = LayerSensitivity(
                name, [name], int(w.numel()), group_for(int(w.shape[1]), config.group_size)
            )
        else:
            entry.modules.append(name)
    return list(by_weight.values())


@torch.no_grad()
def _mean_loss(model: nn.Module, data: CalibrationData, batches: Sequence[Any]) -> float:
    was_training = model.training
    model.eval()
    try:
        return sum(float(data.loss(model, b)) for b in batches) / len(batches)
    finally:
        model.train(was_training)


@torch.no_grad()
def measure_sensitivity(
    model: nn.Module,
    layers: Sequence[LayerSensitivity],
    data: CalibrationData,
    batches: Sequence[Any],
    bits: Sequence[int] | Mapping[str, Sequence[int]],
    *,
    symmetric: bool = False,
    progress: bool = True,
) -> float:
    """Fill each layer's ``loss_increase`` and ``nbytes`` for every width in ``bits`` (or
    ``bits[layer.name]``); the model is left as it was. Returns the float model's mean
    calibration loss."""
    widths = {layer.name: list(bits[layer.name] if isinstance(bits, Mapping) else bits) for layer in layers}
    base = _mean_loss(model, data, batches)
    bar = tqdm(
        total=sum(map(len, widths.values())), desc="layer sensitivity", disable=not progress, leave=False
    )
    for layer in layers:
        originals = {n: model.get_submodule(n) for n in layer.modules}
        for b in widths[layer.name]:
            try:  # only this weight quantized, as it will be stored
                _apply(model, [layer], {layer.name: b}, symmetric)
                layer.loss_increase[b] = _mean_loss(model, data, batches) - base
            finally:
                for n, mod in originals.items():
                    replace_module(model, n, mod)
            bar.update(1)
    bar.close()
    return base


# -- allocation ----------------------------------------------------------------------------


def _monotone(loss_increase: Mapping[int, float]) -> dict[int, float]:
    """Clip at 0 and make non-increasing in the width (more bits never cost quality)."""
    out: dict[int, float] = {}
    floor = 0.0
    for b in sorted(loss_increase, reverse=True):
        floor = max(floor, float(loss_increase[b]))
        out[b] = floor
    return out


def choose_bits(
    layers: Sequence[LayerSensitivity],
    *,
    budget_bytes: float | None = None,
    max_loss_increase: float | None = None,
    fixed: Mapping[str, int] | None = None,
    resolution: int = 16384,
) -> dict[str, int]:
    """One width per layer (among those measured): the least summed loss increase within
    ``budget_bytes``, or the least size whose summed loss increase is at most
    ``max_loss_increase``. ``fixed`` layers keep their width (and count in the size).

    Multiple-choice knapsack by dynamic programming over the size, discretised into
    ``resolution`` steps, each layer's size rounded *up*: the budget always holds.
    """
    if (budget_bytes is None) == (max_loss_increase is None):
        raise ValueError("give exactly one of budget_bytes and max_loss_increase")
    fixed = dict(fixed or {})
    free = [layer for layer in layers if layer.name not in fixed]
    fixed_bytes = sum(layer.nbytes[fixed[layer.name]] for layer in layers if layer.name in fixed)
    fixed_loss = sum(
        _monotone(layer.loss_increase).get(fixed[layer.name], 0.0) for layer in layers if layer.name in fixed
    )
    options = [sorted(layer.nbytes) for layer in free]
    smallest = fixed_bytes + sum(min(layer.nbytes.values()) for layer in free)
    if budget_bytes is not None:
        if smallest > budget_bytes:
            raise ConfigError(
                f"mixed-precision: the budget ({budget_bytes:.0f} bytes) is below the smallest "
                f"possible size ({smallest} bytes, every layer at its fewest bits); raise avg_bits"
            )
        capacity = budget_bytes - fixed_bytes
    else:
        capacity = sum(max(layer.nbytes.values()) for layer in free)
    out = dict(fixed)
    if not free:
        return out
    step = max(capacity, 1.0) / resolution
    inf = float("inf")
    best = np.full(resolution + 1, inf)
    best[0] = 0.0
    choice = np.zeros((len(free), resolution + 1), dtype=np.int16)
    for i, (layer, bits) in enumerate(zip(free, options, strict=True)):
        sens = _monotone(layer.loss_increase)
        new = np.full(resolution + 1, inf)
        for k, b in enumerate(bits):
            cost = math.ceil(layer.nbytes[b] / step - 1e-9)
            if cost > resolution:
                continue
            cand = np.full(resolution + 1, inf)
            cand[cost:] = best[: resolution + 1 - cost] + sens.get(b, 0.0)
            better = cand < new
            new[better] = cand[better]
            choice[i, better] = k
        best = new
    if budget_bytes is not None:
        end = int(np.argmin(best))  # ties: the smallest size with the least loss
    else:
        ok = np.nonzero(best + fixed_loss <= max_loss_increase + 1e-12)[0]  # type: ignore[operator]
        end = int(ok[0]) if len(ok) else int(np.argmin(best))
        if not len(ok):
            log.warning("mixed-precision: no assignment meets max_loss_increase; using the best one")
    for i in range(len(free) - 1, -1, -1):
        k = int(choice[i, end])
        b = options[i][k]
        out[free[i].name] = b
        end -= math.ceil(free[i].nbytes[b] / step - 1e-9)
    return out


# -- the method ----------------------------------------------------------------------------


def _apply(
    model: nn.Module,
    layers: Sequence[LayerSensitivity],
    bits: Mapping[str, int],
    symmetric: bool,
    ctx: CompressContext | None = None,
) -> None:
    """Quantize each layer's weight to ``bits[layer.name]`` (recording the bytes it stores)."""
    layer_of = {n: layer for layer in layers for n in layer.modules}

    def encode(name: str, mod: Any) -> AffineQuantized:
        layer, b = layer_of[name], bits[layer_of[name].name]
        fmt = AffineQuantized.encode(mod.weight.detach(), b, symmetric=symmetric, group_size=layer.group_size)
        layer.nbytes[b] = fmt.stored_nbytes()
        return fmt

    targets = [(n, model.get_submodule(n)) for n in layer_of]
    transform_weights(model, targets, encode, ctx=ctx, method="mixed-precision")


def _log_table(layers: Sequence[LayerSensitivity], bits: Mapping[str, int], widths: Sequence[int]) -> None:
    lines = [
        f"{'layer':<56} {'weights':>9} {'bits':>4}  " + " ".join(f"{'dloss@' + str(b):>10}" for b in widths)
    ]
    for layer in layers:
        sens = " ".join(
            f"{layer.loss_increase[b]:>10.4f}" if b in layer.loss_increase else f"{'-':>10}" for b in widths
        )
        lines.append(f"{layer.name:<56} {layer.numel:>9} {bits[layer.name]:>4}  {sens}")
    log.info("mixed-precision assignment:\n%s", "\n".join(lines))


def _avg_bits(layers: Sequence[LayerSensitivity], bits: Mapping[str, int]) -> float:
    total = sum(layer.numel for layer in layers)
    return 8 * sum(layer.nbytes[bits[layer.name]] for layer in layers) / max(1, total)


@register(MixedPrecisionConfig)
def _mixed(model: nn.Module, config: MixedPrecisionConfig, ctx: CompressContext) -> nn.Module:
    layers = quantizable_weights(model, config)
    names = {layer.name for layer in layers}
    if config.assignment:  # a recorded choice: apply it as is
        given = dict(config.assignment)
        unknown = sorted(set(given) - names)
        missing = sorted(names - set(given))
        if unknown or missing:
            raise ConfigError(
                "mixed-precision: the assignment does not fit this model: "
                f"unknown layers {unknown[:3]}, layers without bits {missing[:3]}"
            )
        _apply(model, layers, given, config.symmetric, ctx)
        log.info("mixed-precision: recorded assignment applied, %.3f bits/weight", _avg_bits(layers, given))
        return model
    fixed: dict[str, int] = {}
    for layer in layers:
        for pattern, b in config.pin:
            if matches(layer.name, (pattern,), ()):
                fixed[layer.name] = b
                break
    data = ctx.require_data(config.name)
    batches = calibration_batches(data, config.name, batch_size=config.batch_size, n_samples=config.n_samples)
    widths = {
        layer.name: [fixed[layer.name]] if layer.name in fixed else config.candidate_bits for layer in layers
    }
    base = measure_sensitivity(
        model, layers, data, batches, widths, symmetric=config.symmetric, progress=ctx.progress
    )
    total = sum(layer.numel for layer in layers)
    budget = None if config.avg_bits is None else config.avg_bits * total / 8
    bits = choose_bits(layers, budget_bytes=budget, max_loss_increase=config.max_loss_increase, fixed=fixed)
    estimate = sum(_monotone(layer.loss_increase)[bits[layer.name]] for layer in layers)
    _apply(model, layers, bits, config.symmetric, ctx)
    _log_table(layers, bits, sorted(set(config.candidate_bits) | set(fixed.values())))
    measured = _mean_loss(model, data, batches) - base
    log.info(
        "mixed-precision: %.3f bits/weight stored (budget %s), calibration loss %.4f, %+.4f "
        "(sum of per-layer increases %.4f)",
        _avg_bits(layers, bits),
        "none" if config.avg_bits is None else f"{config.avg_bits:g}",
        base,
        measured,
        estimate,
    )
    ctx.record(
        dataclasses.replace(config, assignment=tuple((layer.name, bits[layer.name]) for layer in layers))
    )
    return model


FAMILY = "quantization"


@register_preset(
    "mixed-4bit-avg",
    "weight-only RTN with 2/3/4/8 bits per layer chosen by measured sensitivity, "
    "4 stored bits per weight on average (scales included), groups of 128",
    FAMILY,
)
def _mixed4() -> list[MethodConfig]:
    return [MixedPrecisionConfig(candidate_bits=(2, 3, 4, 8), avg_bits=4.0, group_size=128)]
