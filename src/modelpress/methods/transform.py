"""The weight-transform helper: select → encode → wrap → replace, tied weights once.

Every method that re-represents weights (quantization, clustering, sparse storage ...) is a
config plus an ``encode(name, module) -> format | Skip``; this module does the rest::

    @register(MyConfig)
    def _apply(model, config, ctx):
        def encode(name, mod):
            return AffineQuantized.encode(mod.weight.detach(), config.bits)
        transform_weights(model, select(model, config, (nn.Linear,)), encode, ctx=ctx, method=config.name)
        return model

Tied weights (an LM head sharing the embedding matrix, one module reused at several paths)
are encoded once, by the first selected module that holds them, and every module that holds
the same weight gets the very same format object, so ``save`` stores it once.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Sequence

from torch import nn
from tqdm.auto import tqdm

from ..formats.base import CompressedTensor
from ..nn.decoded import wrap_decoded
from .base import CompressContext, replace_module

__all__ = ["Skip", "TransformResult", "transform_weights"]

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Skip:
    """Returned by an ``encode`` function: leave this module as it is, for this reason."""

    reason: str


Encode = Callable[[str, nn.Module], "CompressedTensor | Skip | None"]
Wrap = Callable[[nn.Module, CompressedTensor], nn.Module]


@dataclasses.dataclass
class TransformResult:
    """What ``transform_weights`` did: the formats by module name (tied modules share one
    object) and the modules left as they were, with the reason."""

    formats: dict[str, CompressedTensor] = dataclasses.field(default_factory=dict)
    skipped: dict[str, str] = dataclasses.field(default_factory=dict)

    @property
    def replaced(self) -> list[str]:
        return list(self.formats)


def transform_weights(
    model: nn.Module,
    targets: Sequence[tuple[str, nn.Module]],
    encode: Encode,
    *,
    wrap: Wrap = wrap_decoded,
    ctx: CompressContext | None = None,
    method: str = "",
    desc: str | None = None,
) -> TransformResult:
    """Encode the weight of each ``(name, module)`` of ``targets`` and put the wrapped module
    in its place.

    ``encode`` returns the format, or ``Skip(reason)`` (``None``: skipped without a reason
    of its own) to leave the module as it is; each skip is a note (``ctx.note``). A weight
    shared by several targets is encoded once and the format object shared.
    """
    result = TransformResult()
    by_weight: dict[int, CompressedTensor] = {}  # id(original weight) -> its format (ties)
    progress = ctx.progress if ctx is not None else False
    for name, mod in tqdm(targets, desc=desc or method, disable=not progress, leave=False):
        key = id(mod.weight)
        fmt = by_weight.get(key)
        if fmt is None:
            got = encode(name, mod)
            if got is None or isinstance(got, Skip):
                reason = got.reason if isinstance(got, Skip) else "not encoded"
                result.skipped[name] = reason
                message = f"{method}: {name} left uncompressed: {reason}" if method else f"{name}: {reason}"
                if ctx is not None:
                    ctx.note(message, logger=log)
                else:
                    log.warning("%s", message)
                continue
            fmt = got
            by_weight[key] = fmt
        else:
            log.info(
                "%s shares its %s with a tied module", name, getattr(fmt, "format_name", type(fmt).__name__)
            )
        replace_module(model, name, wrap(mod, fmt))
        result.formats[name] = fmt
    return result
