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

import torch
from torch import nn
from tqdm.auto import tqdm

from ..formats.base import CompressedTensor
from ..nn.base import CompressedModule
from ..nn.decoded import wrap_decoded
from ..nn.rnn import DecodedRNN, rnn_matrices
from .base import CompressContext, replace_module, select_modules

__all__ = [
    "MatrixView",
    "Skip",
    "TransformResult",
    "note_float_layers",
    "rnn_targets",
    "transform_rnn_weights",
    "transform_weights",
]

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


class MatrixView(nn.Module):
    """One weight matrix of a recurrent layer seen as a layer with a ``weight``, so that an
    ``encode(name, module)`` written for Linears encodes it unchanged."""

    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__()
        self.weight = weight


def rnn_targets(model: nn.Module, config: object) -> list[tuple[str, nn.RNNBase]]:
    """The GRU / LSTM / RNN layers ``config``'s include / exclude select (possibly none)."""
    include = getattr(config, "include", ("*",))
    exclude = getattr(config, "exclude", ())
    return select_modules(model, (nn.RNNBase,), include, exclude)  # type: ignore[return-value]


def transform_rnn_weights(
    model: nn.Module,
    targets: Sequence[tuple[str, nn.RNNBase]],
    encode: Encode,
    *,
    ctx: CompressContext | None = None,
    method: str = "",
) -> TransformResult:
    """Encode every weight matrix (``weight_ih_l{k}``, ``weight_hh_l{k}``, projections) of
    each recurrent layer of ``targets`` with ``encode(f"{name}.{matrix}", MatrixView(w))``
    and put a ``DecodedRNN`` in its place. A matrix is stored once and serves every time
    step (weights shared across time); skipped matrices stay float, noted with the reason;
    biases stay float. Result keys are ``name.matrix``."""
    result = TransformResult()
    for name, rnn in targets:
        formats: dict[str, CompressedTensor] = {}
        for matrix in rnn_matrices(rnn):
            full = f"{name}.{matrix}"
            got = encode(full, MatrixView(getattr(rnn, matrix)))
            if got is None or isinstance(got, Skip):
                reason = got.reason if isinstance(got, Skip) else "not encoded"
                result.skipped[full] = reason
                _note(ctx, f"{method}: {full} left uncompressed: {reason}" if method else f"{full}: {reason}")
                continue
            formats[matrix] = got
            result.formats[full] = got
        if formats:
            replace_module(model, name, DecodedRNN.wrap(rnn, formats))
    return result


def _note(ctx: CompressContext | None, message: str) -> None:
    if ctx is not None:
        ctx.note(message, logger=log)
    else:
        log.warning("%s", message)


def note_float_layers(
    model: nn.Module,
    ctx: CompressContext | None,
    method: str,
    handled: tuple[type[nn.Module], ...] = (nn.Linear, nn.Embedding),
) -> list[str]:
    """Say, in one note, which layers holding weight matrices (2-D or more: convolutions,
    transposed convolutions, recurrent layers, anything but Linear / Embedding) ``method``
    left in float because it does not compress that kind of layer (``handled``: the kinds
    it does, compressed or not), so that a layer is never left uncompressed in silence.
    Vectors (biases, norms, PReLU slopes, BatchNorm) stay float in every method and are not
    listed. Returns the names."""
    by_kind: dict[str, list[str]] = {}
    inside: set[str] = set()
    for name, mod in model.named_modules():
        if isinstance(mod, (CompressedModule, CompressedTensor)):
            inside.add(name + ".")
            continue
        if not name or any(name.startswith(p) for p in inside) or isinstance(mod, handled):
            continue
        if any(p.dim() >= 2 and p.is_floating_point() for p in mod.parameters(recurse=False)):
            by_kind.setdefault(type(mod).__name__, []).append(name)
    if not by_kind:
        return []
    parts = []
    for kind, names in sorted(by_kind.items()):
        shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
        parts.append(f"{kind} {shown}")
    _note(ctx, f"{method}: left in float (it does not compress these layer kinds): {'; '.join(parts)}")
    return [n for names in by_kind.values() for n in names]
