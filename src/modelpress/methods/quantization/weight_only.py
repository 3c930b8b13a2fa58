"""Weight-only affine quantization, round to nearest (RTN): INT8 / INT4 / INT3 / INT2,
symmetric or asymmetric, per output channel or per group of columns; packed storage.

The baseline every better quantizer (GPTQ, AWQ ...) is measured against. Weights are
stored in the ``affine`` format (exactly ``bits`` bits per weight on disk plus one scale,
and a zero point if asymmetric, per channel or group) and decoded at each call.
"""

from __future__ import annotations

import dataclasses

from torch import nn

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
from ..transform import rnn_targets, transform_rnn_weights, transform_weights
from .calibration import quant_targets, rtn_encode

__all__ = ["WeightOnlyConfig"]


@register_config
@dataclasses.dataclass(frozen=True)
class WeightOnlyConfig(MethodConfig):
    """Round-to-nearest weight-only quantization of Linear (and Embedding) weights."""

    name = "weight-only"
    notes_float_layers = True
    bits: int = param(4, between(2, 8))
    group_size: int | None = param(128, POSITIVE)
    strict_groups: bool = False
    symmetric: bool = False
    embeddings: bool = True
    include: tuple[str, ...] = ("*",)
    exclude: tuple[str, ...] = ()

    def handled_layers(self) -> tuple[type[nn.Module], ...]:
        return (nn.Linear, nn.Embedding, nn.RNNBase)


@register(WeightOnlyConfig)
def _weight_only(model: nn.Module, config: WeightOnlyConfig, ctx: CompressContext) -> nn.Module:
    targets = quant_targets(model, config)
    transform_weights(
        model, targets, rtn_encode(config), ctx=ctx, method=config.name, desc=f"int{config.bits} RTN"
    )
    # GRU / LSTM matrices, one copy shared by every time step
    transform_rnn_weights(model, rnn_targets(model, config), rtn_encode(config), ctx=ctx, method=config.name)
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
