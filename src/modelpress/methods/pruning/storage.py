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

import torch
from torch import nn

from ...errors import ConfigError
from ...formats.sparse import INDEX_KINDS, SparseTensor
from ...nn.decoded import wrap_decoded
from ..base import CompressContext, MethodConfig, register, register_config, replace_module, select_modules

__all__ = ["INDEX_CHOICES", "SparseStorageConfig", "to_sparse"]

log = logging.getLogger(__name__)

INDEX_CHOICES = ("auto", *INDEX_KINDS)
_TYPES: dict[str, tuple[type[nn.Module], ...]] = {
    "linear": (nn.Linear,),
    "conv": (nn.Conv1d, nn.Conv2d),
    "embedding": (nn.Embedding,),
}


def to_sparse(
    model: nn.Module, layers: dict[str, tuple[nn.Module, torch.Tensor]], *, index: str = "auto"
) -> nn.Module:
    """Replace each ``name -> (module, keep-mask)`` by its decoded module holding a
    ``SparseTensor``; every path to the same weight (a reused module, tied layers) gets the
    same format object, so it is stored once."""
    formats: dict[int, SparseTensor] = {}
    for mod, mask in layers.values():
        formats[id(mod.weight)] = SparseTensor.encode(mod.weight.detach(), mask, index=index)
    paths = [
        (n, m)
        for n, m in model.named_modules(remove_duplicate=False)
        if n
        and id(getattr(m, "weight", None)) in formats
        and isinstance(m, (nn.Linear, nn.Embedding, nn.Conv1d, nn.Conv2d))
    ]
    for n, m in paths:
        replace_module(model, n, wrap_decoded(m, formats[id(m.weight)]))
    return model


@register_config
@dataclasses.dataclass(frozen=True)
class SparseStorageConfig(MethodConfig):
    """Store every selected layer whose exact zeros make the sparse format smaller than its
    dense weight in the ``sparse`` format (``index``: auto | bitmask | relative4 | relative8)."""

    name = "sparse-storage"
    index: str = "auto"
    layers: tuple[str, ...] = ("linear", "conv", "embedding")
    include: tuple[str, ...] = ("*",)
    exclude: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.index not in INDEX_CHOICES:
            raise ConfigError(
                f"sparse-storage: index must be one of {', '.join(INDEX_CHOICES)}, got '{self.index}'"
            )
        if isinstance(self.layers, str) or not self.layers or set(self.layers) - set(_TYPES):
            raise ConfigError(
                f"sparse-storage: layers must be a list from {', '.join(_TYPES)}, got {self.layers!r}"
            )


@register(SparseStorageConfig)
def _store(model: nn.Module, config: SparseStorageConfig, ctx: CompressContext) -> nn.Module:
    types = tuple(t for layer in config.layers for t in _TYPES[layer])
    chosen: dict[str, tuple[nn.Module, torch.Tensor]] = {}
    seen: set[int] = set()
    for name, mod in select_modules(model, types, config.include, config.exclude):
        w = mod.weight.detach()
        if id(mod.weight) in seen:
            continue
        seen.add(id(mod.weight))
        fmt = SparseTensor.encode(w, index=config.index)
        if fmt.nbytes() < w.numel() * w.element_size():
            chosen[name] = (mod, w != 0)
        else:
            log.info(
                "sparse-storage: %s kept dense (%.1f%% zeros do not pay for an index)",
                name,
                100 * float((w == 0).float().mean()),
            )
    if not chosen:
        log.warning("sparse-storage: no selected layer has enough zeros to be stored sparse")
    return to_sparse(model, chosen, index=config.index)
