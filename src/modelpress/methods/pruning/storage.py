"""Sparse storage: pruned layers (exact zeros) become the ``sparse`` format.

``PruneConfig(storage="sparse")`` calls ``to_sparse`` at the end of pruning; the
``sparse-storage`` method does the same for any layer whose zeros make the sparse format
smaller than dense (e.g. after ``prune(storage="dense")`` and a dense fine-tune of one's own).
Storage only: Han et al., "Deep Compression" (arXiv 1510.00149) section 2 for the relative
index.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import torch
from torch import nn

from ...formats.sparse import INDEX_KINDS, SparseTensor
from ..base import CompressContext, MethodConfig, one_of, param, register, register_config, select
from ..transform import transform_weights

__all__ = ["INDEX_CHOICES", "LAYER_TYPES", "SparseStorageConfig", "to_sparse"]

log = logging.getLogger(__name__)

INDEX_CHOICES = ("auto", *INDEX_KINDS)
LAYER_TYPES: dict[str, tuple[type[nn.Module], ...]] = {
    "linear": (nn.Linear,),
    "conv": (nn.Conv1d, nn.Conv2d),
    "embedding": (nn.Embedding,),
}
_ALL_TYPES = tuple(t for ts in LAYER_TYPES.values() for t in ts)


def _store(
    model: nn.Module, formats: dict[int, SparseTensor], ctx: CompressContext | None, method: str
) -> None:
    """Put the ``id(weight) -> format`` in place at every path holding one of those weights
    (a reused module, tied layers): one format object, stored once."""
    paths = [
        (n, m)
        for n, m in model.named_modules(remove_duplicate=False)
        if n and isinstance(m, _ALL_TYPES) and id(m.weight) in formats
    ]
    transform_weights(
        model, paths, lambda _, m: formats[id(m.weight)], ctx=ctx, method=method, desc="sparse storage"
    )


def to_sparse(
    model: nn.Module,
    layers: dict[str, tuple[Any, torch.Tensor]],
    *,
    index: str = "auto",
    ctx: CompressContext | None = None,
) -> nn.Module:
    """Replace each ``name -> (module, keep-mask)`` by its decoded module holding a
    ``SparseTensor``, at every path to that weight."""
    formats = {
        id(m.weight): SparseTensor.encode(m.weight.detach(), mask, index=index) for m, mask in layers.values()
    }
    _store(model, formats, ctx, "prune")
    return model


@register_config
@dataclasses.dataclass(frozen=True)
class SparseStorageConfig(MethodConfig):
    """Store every selected layer whose exact zeros make the sparse format smaller than its
    dense weight in the ``sparse`` format (``index``: auto | bitmask | relative4 | relative8)."""

    name = "sparse-storage"
    notes_float_layers = True
    index: str = param("auto", one_of(*INDEX_CHOICES))
    layers: tuple[str, ...] = param(("linear", "conv", "embedding"), one_of(*LAYER_TYPES), elements=True)
    include: tuple[str, ...] = ("*",)
    exclude: tuple[str, ...] = ()

    def validate(self) -> None:
        if not self.layers:
            raise self.error(f"layers must list some of {', '.join(LAYER_TYPES)}")


@register(SparseStorageConfig)
def _sparse_storage(model: nn.Module, config: SparseStorageConfig, ctx: CompressContext) -> nn.Module:
    formats: dict[int, SparseTensor] = {}
    seen: set[int] = set()
    types = tuple(t for layer in config.layers for t in LAYER_TYPES[layer])
    targets: list[tuple[str, Any]] = select(model, config, types)
    for name, mod in targets:
        if id(mod.weight) in seen:
            continue
        seen.add(id(mod.weight))
        w = mod.weight.detach()
        fmt = SparseTensor.encode(w, index=config.index)
        if fmt.nbytes() < w.numel() * w.element_size():
            formats[id(mod.weight)] = fmt
        else:
            zeros = 100 * float((w == 0).float().mean())
            log.info("sparse-storage: %s kept dense (%.1f%% zeros do not pay for an index)", name, zeros)
    if not formats:
        ctx.note("sparse-storage: no selected layer has enough zeros to be stored sparse", logger=log)
    _store(model, formats, ctx, config.name)
    return model
