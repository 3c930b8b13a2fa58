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
from typing import Any

import torch
from torch import nn

from ...formats.affine import AffineQuantized
from ...primitives.gptq import HessianAccumulator, gptq_quantize
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
    notes_float_layers = True
    bits: int = param(4, between(2, 8))
    group_size: int | None = param(128, POSITIVE)
    strict_groups: bool = False
    symmetric: bool = False
    act_order: bool = True
    damp: float = param(0.01, between(0, 1, lo_open=True, hi_open=True))
    block_size: int = param(128, POSITIVE)
    n_samples: int = param(128, POSITIVE)
    batch_size: int = param(8, POSITIVE)
    embeddings: bool = True
    include: tuple[str, ...] = ("*",)
    exclude: tuple[str, ...] = ()


@register(GPTQConfig)
def _gptq(model: nn.Module, config: GPTQConfig, ctx: CompressContext) -> nn.Module:
    hessian_layers, rtn, data, batches = calibrated_split(model, config, ctx)
    acc: dict[str, HessianAccumulator] = {}

    def observe(name: str, x: torch.Tensor) -> None:
        if name not in acc:
            acc[name] = HessianAccumulator(x.shape[-1], x.device)
        acc[name].add(x)

    def encode(name: str, mod: Any) -> AffineQuantized:
        g = group_for(mod.weight.shape[1], config.group_size)
        q, scale, zp = gptq_quantize(
            mod.weight.detach(),
            acc.pop(name).hessian(),
            config.bits,
            group_size=g,
            symmetric=config.symmetric,
            act_order=config.act_order,
            damp=config.damp,
            block_size=config.block_size,
        )
        return AffineQuantized.from_ints(mod.weight.shape, q, scale, zp, config.bits, g)

    t0 = time.perf_counter()
    desc = f"GPTQ int{config.bits}"
    quantize_by_blocks(
        model, hessian_layers, data, batches, observe, encode, ctx, method=config.name, desc=desc
    )
    transform_weights(
        model, rtn, rtn_encode(config), ctx=ctx, method=config.name, desc=f"int{config.bits} RTN"
    )
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
