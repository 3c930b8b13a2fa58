"""Weight-only affine quantization, round to nearest (RTN): INT8 / INT4 / INT3 / INT2,
symmetric or asymmetric, per output channel or per group of columns; packed storage.

The baseline every better quantizer (GPTQ, AWQ ...) is measured against. Weights are
stored in the ``affine`` format (exactly ``bits`` bits per weight on disk plus one scale,
and a zero point if asymmetric, per channel or group) and decoded at each call.
"""

from __future__ import annotations

import dataclasses
import logging

from torch import nn
from tqdm.auto import tqdm

from ...errors import ConfigError
from ...formats.affine import AffineQuantized
from ...nn.decoded import wrap_decoded
from ..base import (
    CompressContext,
    MethodConfig,
    register,
    register_config,
    register_preset,
    replace_module,
    select_modules,
)
from .calibration import group_for, log_group_fallbacks

__all__ = ["WeightOnlyConfig"]

log = logging.getLogger(__name__)


@register_config
@dataclasses.dataclass(frozen=True)
class WeightOnlyConfig(MethodConfig):
    """Round-to-nearest weight-only quantization of Linear (and Embedding) weights."""

    name = "weight-only"
    bits: int = 4
    group_size: int | None = 128
    strict_groups: bool = False
    symmetric: bool = False
    embeddings: bool = True
    include: tuple[str, ...] = ("*",)
    exclude: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.bits, int) or not 2 <= self.bits <= 8:
            raise ConfigError(f"weight-only: bits must be an integer in 2..8, got {self.bits!r}")
        if self.group_size is not None and (not isinstance(self.group_size, int) or self.group_size < 1):
            raise ConfigError(
                f"weight-only: group_size must be a positive integer or null, got {self.group_size!r}"
            )


@register(WeightOnlyConfig)
def _weight_only(model: nn.Module, config: WeightOnlyConfig, ctx: CompressContext) -> nn.Module:
    types: tuple[type[nn.Module], ...] = (nn.Linear, nn.Embedding) if config.embeddings else (nn.Linear,)
    targets = select_modules(model, types, config.include, config.exclude)
    if not targets:
        raise ConfigError("weight-only: no layer to quantize (check include/exclude)")
    log_group_fallbacks("weight-only", targets, config.group_size, config.strict_groups)
    shared: dict[int, AffineQuantized] = {}
    for name, mod in tqdm(targets, desc=f"int{config.bits} RTN", disable=not ctx.progress, leave=False):
        fmt = shared.get(id(mod.weight))
        if fmt is None:
            fmt = AffineQuantized.encode(
                mod.weight.detach(),
                config.bits,
                symmetric=config.symmetric,
                group_size=group_for(mod.weight.shape[1], config.group_size),
            )
            shared[id(mod.weight)] = fmt
        replace_module(model, name, wrap_decoded(mod, fmt))
    return model


FAMILY = "quantization"


@register_preset("int8-weight", "weight-only INT8, symmetric, per output channel", FAMILY)
def _w8() -> list[MethodConfig]:
    return [WeightOnlyConfig(bits=8, group_size=None, symmetric=True)]


@register_preset("int4-g128", "weight-only INT4 round-to-nearest, asymmetric, groups of 128", FAMILY)
def _w4() -> list[MethodConfig]:
    return [WeightOnlyConfig(bits=4, group_size=128)]


@register_preset("int3-g128", "weight-only INT3 round-to-nearest, asymmetric, groups of 128", FAMILY)
def _w3() -> list[MethodConfig]:
    return [WeightOnlyConfig(bits=3, group_size=128)]


@register_preset("int2-g64", "weight-only INT2 round-to-nearest, asymmetric, groups of 64", FAMILY)
def _w2() -> list[MethodConfig]:
    return [WeightOnlyConfig(bits=2, group_size=64)]
