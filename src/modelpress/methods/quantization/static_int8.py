"""Static INT8 (W8A8): activation scales fixed ahead of time from calibration data.

Jacob et al., "Quantization and Training of Neural Networks for Efficient Integer-Arithmetic-
Only Inference" (arXiv 1712.05877). Weights are INT8, symmetric, per output channel (or one
scale per tensor); each Linear's input gets one INT8 scale (and zero point when asymmetric)
chosen by an observer on the task's calibration batches (``minmax``, ``percentile`` or
``mse``; see ``primitives.activation``). The GEMM is ``torch._int_mm`` (``Int8StaticLinear``);
embeddings are weight-only INT8.

Out-of-line layers: one per-tensor scale cannot serve an input whose range is dominated by
a few outliers (every other value rounds to a handful of levels). After calibration each
layer's relative output error ``‖y_q − y‖ / ‖y‖`` on the calibration inputs is measured, in
isolation (inputs from the float model). A layer whose error exceeds ``max_error_ratio``
times the median error of the layers, or the absolute ``max_error``, keeps higher precision
(``fallback``): dynamic per-token INT8 (``Int8DynamicLinear``) when *its* error is in line,
else the original float Linear. Every such layer is logged as a warning with its errors and
added to ``CompressContext.notes``.
"""

from __future__ import annotations

import dataclasses
import logging
import statistics
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from ...data.calibration import calibration_batches, input_hooks, run_forward
from ...errors import ConfigError
from ...formats.affine import AffineQuantized
from ...nn.int8 import Int8DynamicLinear, Int8Embedding, Int8StaticLinear
from ...primitives.activation import OBSERVERS, ActivationObserver
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
    select,
)
from ..transform import Skip, transform_weights

__all__ = ["StaticInt8Config", "encode_int8_weight", "layer_errors"]

log = logging.getLogger(__name__)


@register_config
@dataclasses.dataclass(frozen=True)
class StaticInt8Config(MethodConfig):
    """Static W8A8 for Linear layers; weight-only INT8 for Embeddings.

    observer: ``minmax`` | ``percentile`` | ``mse`` (per-tensor activation range);
    percentile: the percentile the ``percentile`` observer keeps (e.g. 99.99);
    act_symmetric: symmetric activations (zero point 0) or asymmetric (a zero point, better
    for one-sided inputs such as GELU outputs); weight_granularity: ``channel`` | ``tensor``;
    n_samples / batch_size: calibration examples from the task's train split;
    sample_size: activation values per layer kept by the percentile / mse observers (at most
    2**24, torch.quantile's limit);
    max_error_ratio / max_error: out-of-line thresholds on a layer's relative output error
    (``null`` disables one); fallback: ``dynamic`` (per-token INT8, or float if that is out of
    line too) or ``float`` for out-of-line layers.
    """

    name = "static-int8"
    notes_float_layers = True
    observer: str = param("mse", one_of(*OBSERVERS))
    percentile: float = param(99.99, between(50.0, 100.0, lo_open=True))
    act_symmetric: bool = False
    weight_granularity: str = param("channel", one_of("channel", "tensor"))
    n_samples: int = param(128, POSITIVE)
    batch_size: int = param(8, POSITIVE)
    sample_size: int = param(1 << 18, between(1, 1 << 24))
    max_error_ratio: float | None = param(8.0, between(1.0, lo_open=True))
    max_error: float | None = param(0.25, POSITIVE)
    fallback: str = param("dynamic", one_of("dynamic", "float"))
    embeddings: bool = True
    include: tuple[str, ...] = ("*",)
    exclude: tuple[str, ...] = ()


def encode_int8_weight(w: torch.Tensor, granularity: str = "channel") -> AffineQuantized:
    """Symmetric INT8 of a ``(out, in)`` weight, one scale per row or one for the tensor
    (stored per row, all equal, so the INT8 modules handle both alike)."""
    if granularity == "channel":
        return AffineQuantized.encode(w.detach(), bits=8)
    w = w.detach().float()
    scale = (w.abs().amax() / 127.0).clamp_min(1e-12)
    q = torch.round(w / scale).clamp_(-127, 127).to(torch.int8)
    return AffineQuantized.from_ints(w.shape, q, scale.expand(w.shape[0], 1).clone(), None, 8, None)


@torch.no_grad()
def layer_errors(
    model: nn.Module,
    layers: dict[str, nn.Module],
    candidates: Mapping[str, Mapping[str, nn.Module]],
    data: Any,
    batches: list[Any],
    *,
    progress: bool = False,
) -> dict[str, dict[str, float]]:
    """Relative output error ``‖y_q − y‖ / ‖y‖`` of each candidate replacement of each
    (float) layer, on that layer's float inputs over the calibration batches."""
    num: dict[str, dict[str, float]] = {n: dict.fromkeys(c, 0.0) for n, c in candidates.items()}
    den: dict[str, float] = dict.fromkeys(candidates, 0.0)

    def hook(name: str):
        def run(_mod: nn.Module, args: tuple[Any, ...], out: torch.Tensor) -> None:
            x, y = args[0].detach(), out.detach().float()
            den[name] += float(y.pow(2).sum())
            for kind, q in candidates[name].items():
                num[name][kind] += float((q(x).float() - y).pow(2).sum())

        return run

    handles = [layers[n].register_forward_hook(hook(n)) for n in candidates]
    try:
        run_forward(model, data, batches, desc="measuring INT8 error", progress=progress)
    finally:
        for h in handles:
            h.remove()
    return {n: {k: (v / max(den[n], 1e-30)) ** 0.5 for k, v in num[n].items()} for n in candidates}


def _out_of_line(err: float, median: float, config: StaticInt8Config) -> bool:
    if config.max_error is not None and err > config.max_error:
        return True
    return config.max_error_ratio is not None and err > config.max_error_ratio * median


@register(StaticInt8Config)
def _static_int8(model: nn.Module, config: StaticInt8Config, ctx: CompressContext) -> nn.Module:
    n = config.name
    targets = select(model, config, (nn.Linear, nn.Embedding) if config.embeddings else (nn.Linear,))
    linears: dict[str, Any] = {name: m for name, m in targets if isinstance(m, nn.Linear)}
    data = ctx.require_data(n)
    batches = calibration_batches(data, n, batch_size=config.batch_size, n_samples=config.n_samples)

    # pass 1: one observer per Linear input
    observers = {
        name: ActivationObserver(
            config.observer,
            percentile=float(config.percentile),
            symmetric=config.act_symmetric,
            sample_size=config.sample_size,
        )
        for name in linears
    }
    try:
        with input_hooks(linears, lambda name, x: observers[name].add(x)):
            run_forward(model, data, batches, desc=f"{n}: observing", progress=ctx.progress)
    except ValueError as e:  # NaN activations
        raise ConfigError(f"{n}: {e}") from None

    # candidates: static INT8 and, for the fallback, dynamic INT8 on the same INT8 weight
    candidates: dict[str, dict[str, Int8StaticLinear | Int8DynamicLinear]] = {}
    for name, lin in linears.items():
        if observers[name].n == 0:
            continue
        fmt = encode_int8_weight(lin.weight, config.weight_granularity)
        scale, zp = observers[name].qparams()
        static = Int8StaticLinear.from_float(lin, scale, zp, act_symmetric=config.act_symmetric, weight=fmt)
        candidates[name] = {"static": static}
        if config.fallback == "dynamic":
            candidates[name]["dynamic"] = Int8DynamicLinear.from_float(lin, weight=fmt)

    # pass 2: each layer's own output error, then the out-of-line ones keep more precision
    errors = layer_errors(model, linears, candidates, data, batches, progress=ctx.progress)
    median = statistics.median(e["static"] for e in errors.values()) if errors else 0.0
    kind: dict[nn.Module, Any] = {}  # float Linear -> "static", "dynamic" or Skip(why it stays)
    for name, lin in linears.items():
        err = errors.get(name)
        if err is None:
            kind[lin] = Skip("it never ran on the calibration data")
        elif not _out_of_line(err["static"], median, config):
            kind[lin] = "static"
        else:
            why = f"static INT8 output error {err['static']:.4f} is out of line (median {median:.4f})"
            if "dynamic" in err and not _out_of_line(err["dynamic"], median, config):
                kind[lin] = "dynamic"
                ctx.note(
                    f"{n}: {name}: {why}; kept as dynamic per-token INT8 (error {err['dynamic']:.4f})",
                    logger=log,
                )
            else:
                dyn = f", dynamic INT8 {err['dynamic']:.4f}" if "dynamic" in err else ""
                kind[lin] = Skip(f"{why}{dyn}; kept in float")

    def encode(name: str, mod: Any) -> AffineQuantized | Skip:
        if isinstance(mod, nn.Embedding):
            return encode_int8_weight(mod.weight)  # per row: the lookup gathers rows and their scales
        k = kind[mod]
        return k if isinstance(k, Skip) else candidates[name][k].weight

    names = {m: name for name, m in linears.items()}

    def wrap(mod: Any, fmt: Any) -> nn.Module:
        if isinstance(mod, nn.Embedding):
            # a per-tensor weight of a tied Linear stays the Linear's; the lookup keeps per-row scales
            own = fmt if config.weight_granularity == "channel" else encode_int8_weight(mod.weight)
            return Int8Embedding(own, mod.padding_idx)
        chosen = candidates[names[mod]][kind[mod]]
        chosen.weight = fmt  # the same values; one object for every Linear tied to this weight
        return chosen

    # Linears first: an Embedding tied to a Linear shares its INT8 weight
    ordered = sorted(targets, key=lambda t: isinstance(t[1], nn.Embedding))
    transform_weights(model, ordered, encode, wrap=wrap, ctx=ctx, method=n)
    n_static = sum(1 for lin in linears.values() if kind[lin] == "static")
    log.info(
        "%s: %d Linear layers static INT8 (%s observer), %d kept at higher precision, %d Embeddings INT8",
        n,
        n_static,
        config.observer,
        len(linears) - n_static,
        len(targets) - len(linears),
    )
    return model


FAMILY = "quantization"


@register_preset(
    "int8-static",
    "static W8A8: per-channel INT8 weights, per-tensor INT8 activations calibrated (MSE observer)",
    FAMILY,
)
def _preset() -> list[MethodConfig]:
    return [StaticInt8Config()]
