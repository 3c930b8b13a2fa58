"""Dynamic INT8: per-token INT8 activations x per-channel INT8 weights for Linear layers,
weight-only INT8 (per row) for embeddings.

The INT8 GEMM is ``torch._int_mm``; activations are quantized at run time from their own
range, so no calibration data is needed. Tied weights (an LM head sharing the embedding
matrix) share one INT8 tensor, stored once.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

from torch import nn

from ...formats.affine import AffineQuantized
from ...nn.int8 import Int8DynamicLinear, Int8Embedding
from ..base import CompressContext, MethodConfig, register, register_config, register_preset, select
from ..transform import rnn_targets, transform_rnn_weights, transform_weights

log = logging.getLogger(__name__)


@register_config
@dataclasses.dataclass(frozen=True)
class Int8DynamicConfig(MethodConfig):
    """Dynamic W8A8 for Linear layers; weight-only INT8 for Embeddings.

    ``include``/``exclude`` are shell patterns on module names (``*`` spans dots).
    """

    name = "int8-dynamic"
    notes_float_layers = True
    include: tuple[str, ...] = ("*",)
    exclude: tuple[str, ...] = ()
    embeddings: bool = True

    def handled_layers(self) -> tuple[type[nn.Module], ...]:
        return (nn.Linear, nn.Embedding, nn.RNNBase)


def _encode(_name: str, mod: Any) -> AffineQuantized:
    return AffineQuantized.encode(mod.weight.detach(), bits=8)


def _wrap(mod: Any, weight: Any) -> nn.Module:
    if isinstance(mod, nn.Embedding):
        return Int8Embedding(weight, mod.padding_idx)
    bias = mod.bias.detach().float().clone() if mod.bias is not None else None
    return Int8DynamicLinear(weight, bias)


@register(Int8DynamicConfig)
def _int8_dynamic(model: nn.Module, config: Int8DynamicConfig, ctx: CompressContext) -> nn.Module:
    types = (nn.Embedding, nn.Linear) if config.embeddings else (nn.Linear,)
    done = transform_weights(
        model,
        select(model, config, types),
        _encode,
        wrap=_wrap,
        ctx=ctx,
        method=config.name,
    )
    # GRU / LSTM: per-channel int8 weight matrices, decoded once per call (weight-only: the
    # recurrent step has no int8 kernel here), shared by every time step
    transform_rnn_weights(model, rnn_targets(model, config), _encode, ctx=ctx, method=config.name)
    log.info("int8-dynamic: %d Linear / Embedding layers quantized", len(done.replaced))
    return model


@register_preset("int8-dynamic", "dynamic per-token INT8 activations x per-channel INT8 weights")
def _preset() -> list[MethodConfig]:
    return [Int8DynamicConfig()]
