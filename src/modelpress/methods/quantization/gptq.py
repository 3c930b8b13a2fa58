"""GPTQ weight-only quantization (Frantar et al., arXiv 2210.17323), block by block.

Each Linear's Hessian ``2XXᵀ/n`` is accumulated from its calibration inputs (with the
earlier blocks already quantized), then ``primitives.gptq.gptq_quantize`` rounds its columns
with error compensation. The result is the same ``affine`` format as round-to-nearest
(``weight-only``), so sizes match RTN's exactly and only the integers differ. Embeddings,
and Linear weights tied to them (an LM head), are rounded to nearest: the Hessian of the
LM head says nothing about the embedding lookup that shares its weight.
"""

from __future__ import annotations

import dataclasses
import logging
import time

from torch import nn

from ...errors import ConfigError
from ...formats.affine import AffineQuantized
from ...nn.decoded import wrap_decoded
from ...primitives.gptq import HessianAccumulator, gptq_quantize
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
from .sequential import quantize_by_blocks

__all__ = ["GPTQConfig"]

log = logging.getLogger(__name__)


@register_config
@dataclasses.dataclass(frozen=True)
class GPTQConfig(MethodConfig):
    """GPTQ of Linear weights; embeddings (and weights tied to them) round to nearest.

    act_order: quantize columns in order of decreasing Hessian diagonal (group parameters
    then come from the original weights: "static groups"). damp: fraction of the mean
    Hessian diagonal added to it. n_samples / batch_size: calibration sequences from the
    task's train split.
    """

    name = "gptq"
    bits: int = 4
    group_size: int | None = 128
    strict_groups: bool = False
    symmetric: bool = False
    act_order: bool = True
    damp: float = 0.01
    block_size: int = 128
    n_samples: int = 128
    batch_size: int = 8
    embeddings: bool = True
    include: tuple[str, ...] = ("*",)
    exclude: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.bits, int) or not 2 <= self.bits <= 8:
            raise ConfigError(f"gptq: bits must be an integer in 2..8, got {self.bits!r}")
        if self.group_size is not None and (not isinstance(self.group_size, int) or self.group_size < 1):
            raise ConfigError(f"gptq: group_size must be a positive integer or null, got {self.group_size!r}")
        if not 0 < self.damp < 1:
            raise ConfigError(f"gptq: damp must lie in (0, 1), got {self.damp!r}")
        for f in ("block_size", "n_samples", "batch_size"):
            v = getattr(self, f)
            if not isinstance(v, int) or v < 1:
                raise ConfigError(f"gptq: {f} must be a positive integer, got {v!r}")


def tied_weight_ids(model: nn.Module) -> set[int]:
    """ids of weights held by more than one module (tied embeddings / LM head)."""
    seen: dict[int, int] = {}
    for m in model.modules():
        w = getattr(m, "weight", None)
        if isinstance(w, nn.Parameter):
            seen[id(w)] = seen.get(id(w), 0) + 1
    return {k for k, v in seen.items() if v > 1}


def rtn_modules(
    model: nn.Module, modules: list[tuple[str, nn.Module]], bits: int, group_size: int | None, symmetric: bool
) -> None:
    """Round-to-nearest for the given modules, one shared format per tied weight."""
    shared: dict[int, AffineQuantized] = {}
    for name, mod in modules:
        fmt = shared.get(id(mod.weight))
        if fmt is None:
            g = group_for(mod.weight.shape[1], group_size)
            fmt = AffineQuantized.encode(mod.weight.detach(), bits, symmetric=symmetric, group_size=g)
            shared[id(mod.weight)] = fmt
        replace_module(model, name, wrap_decoded(mod, fmt))


@register(GPTQConfig)
def _gptq(model: nn.Module, config: GPTQConfig, ctx: CompressContext) -> nn.Module:
    types: tuple[type[nn.Module], ...] = (nn.Linear, nn.Embedding) if config.embeddings else (nn.Linear,)
    targets = list(select_modules(model, types, config.include, config.exclude))
    if not targets:
        raise ConfigError("gptq: no layer matched include/exclude")
    log_group_fallbacks("gptq", targets, config.group_size, config.strict_groups)
    tied = tied_weight_ids(model)
    rtn = [(n, m) for n, m in targets if not isinstance(m, nn.Linear) or id(m.weight) in tied]
    hessian_layers = {n: m for n, m in targets if (n, m) not in rtn}
    batches = calibration_batches(ctx.data, "gptq", config.n_samples, config.batch_size)
    acc: dict[str, HessianAccumulator] = {}

    def observe(name: str, x) -> None:
        if name not in acc:
            acc[name] = HessianAccumulator(x.shape[-1], x.device)
        acc[name].add(x)

    def quantize(mods: dict[str, nn.Module]) -> None:
        for name, mod in mods.items():
            h = acc.pop(name).hessian()
            g = group_for(mod.weight.shape[1], config.group_size)
            q, scale, zp = gptq_quantize(
                mod.weight.detach(),
                h,
                config.bits,
                group_size=g,
                symmetric=config.symmetric,
                act_order=config.act_order,
                damp=config.damp,
                block_size=config.block_size,
            )
            fmt = AffineQuantized.from_ints(mod.weight.shape, q, scale, zp, config.bits, g)
            replace_module(model, name, wrap_decoded(mod, fmt))

    t0 = time.perf_counter()
    if hessian_layers:
        quantize_by_blocks(
            model,
            hessian_layers,
            ctx.data,
            batches,
            observe,
            quantize,
            desc=f"GPTQ int{config.bits}",
            progress=ctx.progress,
        )
    rtn_modules(model, rtn, config.bits, config.group_size, config.symmetric)
    log.info(
        "gptq: %d layers by GPTQ, %d rounded to nearest, in %.1f s",
        len(hessian_layers),
        len(rtn),
        time.perf_counter() - t0,
    )
    return model


FAMILY = "quantization"


@register_preset("gptq-4bit", "GPTQ INT4, asymmetric, groups of 128, act-order (calibrated)", FAMILY)
def _g4() -> list[MethodConfig]:
    return [GPTQConfig(bits=4, group_size=128)]


@register_preset("gptq-3bit", "GPTQ INT3, asymmetric, groups of 128, act-order (calibrated)", FAMILY)
def _g3() -> list[MethodConfig]:
    return [GPTQConfig(bits=3, group_size=128)]
