"""Dynamic INT8: per-token INT8 activations x per-channel INT8 weights for Linear layers,
weight-only INT8 (per row) for embeddings.

The INT8 GEMM is ``torch._int_mm``; activations are quantized at run time from their own
range, so no calibration data is needed. Tied weights (an LM head sharing the embedding
matrix) share one INT8 tensor, stored once.
"""

from __future__ import annotations

import dataclasses
import logging

from torch import nn

from ...errors import ConfigError
from ...formats.affine import AffineQuantized
from ...nn.int8 import Int8DynamicLinear, Int8Embedding
from ..base import (
    CompressContext,
    MethodConfig,
    register,
    register_config,
    register_preset,
    replace_module,
    select_modules,
)

log = logging.getLogger(__name__)


@register_config
@dataclasses.dataclass(frozen=True)
class Int8DynamicConfig(MethodConfig):
    """Dynamic W8A8 for Linear layers; weight-only INT8 for Embeddings.

    ``include``/``exclude`` are shell patterns on module names (``*`` spans dots).
    """

    name = "int8-dynamic"
    include: tuple[str, ...] = ("*",)
    exclude: tuple[str, ...] = ()
    embeddings: bool = True

    def __post_init__(self) -> None:
        for f in ("include", "exclude"):
            v = getattr(self, f)
            if isinstance(v, str) or not all(isinstance(p, str) for p in v):
                raise ConfigError(f"int8-dynamic: '{f}' must be a list of name patterns")


@register(Int8DynamicConfig)
def _int8_dynamic(model: nn.Module, config: Int8DynamicConfig, ctx: CompressContext) -> nn.Module:
    by_weight: dict[int, AffineQuantized] = {}  # id(original weight) -> its INT8 format (ties)
    n_emb = n_lin = 0
    if config.embeddings:
        for name, emb in select_modules(model, (nn.Embedding,), config.include, config.exclude):
            new = Int8Embedding.from_float(emb)
            by_weight[id(emb.weight)] = new.weight
            replace_module(model, name, new)
            n_emb += 1
    for name, lin in select_modules(model, (nn.Linear,), config.include, config.exclude):
        shared = by_weight.get(id(lin.weight))
        new = Int8DynamicLinear.from_float(lin, weight=shared)
        by_weight.setdefault(id(lin.weight), new.weight)
        replace_module(model, name, new)
        n_lin += 1
        if shared is not None:
            log.info("%s shares its INT8 weight with a tied embedding", name)
    if n_lin + n_emb == 0:
        raise ConfigError("int8-dynamic: no Linear or Embedding layer matched include/exclude")
    log.info("int8-dynamic: %d Linear and %d Embedding layers quantized", n_lin, n_emb)
    return model


@register_preset("int8-dynamic", "dynamic per-token INT8 activations x per-channel INT8 weights")
def _preset() -> list[MethodConfig]:
    return [Int8DynamicConfig()]
