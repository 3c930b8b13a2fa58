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
from typing import Any

import torch
from torch import nn

from ...errors import ConfigError
from ...formats.affine import AffineQuantized
from ...nn.int8 import Int8DynamicLinear, Int8Embedding, Int8StaticLinear
from ...primitives.activation import OBSERVERS, ActivationObserver
from ..base import (
    CompressContext,
    MethodConfig,
    register,
    register_config,
    register_preset,
    replace_module,
    select_modules,
)
from .calibration import calibration_batches, input_hooks, run_forward

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
    sample_size: activation values per layer kept by the percentile / mse observers;
    max_error_ratio / max_error: out-of-line thresholds on a layer's relative output error
    (``null`` disables one); fallback: ``dynamic`` (per-token INT8, or float if that is out of
    line too) or ``float`` for out-of-line layers.
    """

    name = "static-int8"
    observer: str = "mse"
    percentile: float = 99.99
    act_symmetric: bool = False
    weight_granularity: str = "channel"
    n_samples: int = 128
    batch_size: int = 8
    sample_size: int = 1 << 18
    max_error_ratio: float | None = 8.0
    max_error: float | None = 0.25
    fallback: str = "dynamic"
    embeddings: bool = True
    include: tuple[str, ...] = ("*",)
    exclude: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        n = self.name
        if self.observer not in OBSERVERS:
            raise ConfigError(f"{n}: unknown observer '{self.observer}' (choose from {', '.join(OBSERVERS)})")
        if not isinstance(self.percentile, (int, float)) or not 50.0 < self.percentile <= 100.0:
            raise ConfigError(f"{n}: percentile must lie in (50, 100], got {self.percentile!r}")
        if self.weight_granularity not in ("channel", "tensor"):
            raise ConfigError(
                f"{n}: weight_granularity must be 'channel' or 'tensor', got {self.weight_granularity!r}"
            )
        if self.fallback not in ("dynamic", "float"):
            raise ConfigError(f"{n}: fallback must be 'dynamic' or 'float', got {self.fallback!r}")
        for f in ("n_samples", "batch_size", "sample_size"):
            v = getattr(self, f)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ConfigError(f"{n}: {f} must be a positive integer, got {v!r}")
        if self.sample_size > 1 << 24:
            raise ConfigError(f"{n}: sample_size must be at most 2**24 (torch.quantile's limit)")
        if self.max_error_ratio is not None and not (
            isinstance(self.max_error_ratio, (int, float)) and self.max_error_ratio > 1.0
        ):
            raise ConfigError(
                f"{n}: max_error_ratio must be a number above 1 or null, got {self.max_error_ratio!r}"
            )
        if self.max_error is not None and not (
            isinstance(self.max_error, (int, float)) and self.max_error > 0
        ):
            raise ConfigError(f"{n}: max_error must be a positive number or null, got {self.max_error!r}")
        for f in ("include", "exclude"):
            v = getattr(self, f)
            if isinstance(v, str) or not all(isinstance(p, str) for p in v):
                raise ConfigError(f"{n}: '{f}' must be a list of name patterns")


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
    candidates: dict[str, dict[str, nn.Module]],
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


def _note(ctx: CompressContext, msg: str) -> None:
    log.warning(msg)
    ctx.notes.append(msg)


@register(StaticInt8Config)
def _static_int8(model: nn.Module, config: StaticInt8Config, ctx: CompressContext) -> nn.Module:
    n = config.name
    linears = dict(select_modules(model, (nn.Linear,), config.include, config.exclude))
    embeddings = (
        dict(select_modules(model, (nn.Embedding,), config.include, config.exclude))
        if config.embeddings
        else {}
    )
    if not linears and not embeddings:
        raise ConfigError(f"{n}: no Linear or Embedding layer matched include/exclude")
    batches = calibration_batches(ctx.data, n, config.n_samples, config.batch_size)

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
            run_forward(model, ctx.data, batches, desc=f"{n}: observing", progress=ctx.progress)
    except ValueError as e:  # NaN activations
        raise ConfigError(f"{n}: {e}") from None

    # candidates: static INT8 and, for the fallback, dynamic INT8 on the same INT8 weight
    by_weight: dict[int, AffineQuantized] = {}  # id(float weight) -> INT8 format (tied weights)
    candidates: dict[str, dict[str, nn.Module]] = {}
    for name, lin in linears.items():
        obs = observers[name]
        if obs.n == 0:
            _note(ctx, f"{n}: {name} never ran on the calibration data; kept in float")
            continue
        fmt = by_weight.get(id(lin.weight))
        if fmt is None:
            fmt = encode_int8_weight(lin.weight, config.weight_granularity)
            by_weight[id(lin.weight)] = fmt
        scale, zp = obs.qparams()
        static = Int8StaticLinear.from_float(lin, scale, zp, act_symmetric=config.act_symmetric, weight=fmt)
        candidates[name] = {"static": static}
        if config.fallback == "dynamic":
            candidates[name]["dynamic"] = Int8DynamicLinear.from_float(lin, weight=fmt)

    # pass 2: each layer's own output error, then the out-of-line ones keep more precision
    errors = layer_errors(model, linears, candidates, ctx.data, batches, progress=ctx.progress)
    median = statistics.median(e["static"] for e in errors.values()) if errors else 0.0
    n_static = 0
    for name, cands in candidates.items():
        err = errors[name]
        if not _out_of_line(err["static"], median, config):
            replace_module(model, name, cands["static"])
            n_static += 1
            continue
        why = f"static INT8 output error {err['static']:.4f} is out of line (median {median:.4f})"
        if "dynamic" in err and not _out_of_line(err["dynamic"], median, config):
            replace_module(model, name, cands["dynamic"])
            _note(ctx, f"{n}: {name}: {why}; kept as dynamic per-token INT8 (error {err['dynamic']:.4f})")
        else:
            dyn = f", dynamic INT8 {err['dynamic']:.4f}" if "dynamic" in err else ""
            _note(ctx, f"{n}: {name}: {why}{dyn}; kept in float")
    for name, emb in embeddings.items():
        fmt = by_weight.get(id(emb.weight)) if config.weight_granularity == "channel" else None
        new = Int8Embedding(fmt, emb.padding_idx) if fmt is not None else Int8Embedding.from_float(emb)
        replace_module(model, name, new)
    log.info(
        "%s: %d Linear layers static INT8 (%s observer), %d kept at higher precision, %d Embeddings INT8",
        n,
        n_static,
        config.observer,
        len(linears) - n_static,
        len(embeddings),
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
