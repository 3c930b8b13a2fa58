"""Cast floating-point weights to a smaller float dtype (fp16 / bf16)."""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from ..base import CompressContext, MethodConfig, one_of, param, register, register_config, register_preset

_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


@register_config
@dataclasses.dataclass(frozen=True)
class CastConfig(MethodConfig):
    """Cast every floating-point parameter and buffer to ``dtype``."""

    name = "cast"
    dtype: str = param("float16", one_of(*_DTYPES))


@register(CastConfig)
def _cast(model: nn.Module, config: CastConfig, ctx: CompressContext) -> nn.Module:
    return model.to(_DTYPES[config.dtype])


@register_preset("fp32", "the original model, float32")
def _fp32() -> list[MethodConfig]:
    return []


@register_preset("fp16", "all weights cast to float16")
def _fp16() -> list[MethodConfig]:
    return [CastConfig("float16")]


@register_preset("bf16", "all weights cast to bfloat16")
def _bf16() -> list[MethodConfig]:
    return [CastConfig("bfloat16")]
