"""Where the parts of a model are: its transformer blocks and its tied weights."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from ..errors import ConfigError

__all__ = ["block_list", "blocks_holding", "tied_weight_ids", "weight_owners"]


def weight_owners(model: nn.Module) -> dict[int, list[str]]:
    """``id(weight) -> names of the modules holding it`` (a reused module counts at each of
    its paths; a tied LM head and its embedding share one entry)."""
    owners: dict[int, list[str]] = {}
    for name, m in model.named_modules(remove_duplicate=False):
        w = getattr(m, "weight", None)
        if isinstance(w, nn.Parameter) and name:
            owners.setdefault(id(w), []).append(name)
    return owners


def tied_weight_ids(model: nn.Module) -> set[int]:
    """ids of weights held by more than one module (tied embeddings / LM head)."""
    seen: dict[int, int] = {}
    for m in model.modules():
        w = getattr(m, "weight", None)
        if isinstance(w, nn.Parameter):
            seen[id(w)] = seen.get(id(w), 0) + 1
    return {k for k, v in seen.items() if v > 1}


def block_list(model: nn.Module, method: str) -> tuple[str, nn.ModuleList]:
    """The transformer's list of blocks: the one ModuleList of ``config.num_hidden_layers``
    modules of one class (BERT ``bert.encoder.layer``, Llama ``model.layers``)."""
    n = getattr(getattr(model, "config", None), "num_hidden_layers", None)
    if n is None:
        raise ConfigError(
            f"{method} needs a transformers model with config.num_hidden_layers; got {type(model).__name__}"
        )
    found = [
        (name, m)
        for name, m in model.named_modules()
        if isinstance(m, nn.ModuleList) and len(m) == n and len({type(b) for b in m}) == 1
    ]
    if len(found) != 1:
        raise ConfigError(
            f"{method} found {'no' if not found else len(found)} lists of {n} transformer blocks in "
            f"{type(model).__name__}; it supports transformers models whose blocks are one ModuleList "
            "of config.num_hidden_layers layers"
        )
    return found[0]


def blocks_holding(model: nn.Module, names: Sequence[str]) -> tuple[str, nn.ModuleList] | None:
    """The ModuleList holding the most of the given layers (the blocks a sequential method
    walks through), or ``None``."""
    best: tuple[int, str, nn.ModuleList] | None = None
    for name, m in model.named_modules():
        if isinstance(m, nn.ModuleList) and len(m) > 1 and name:
            count = sum(1 for n in names if n.startswith(name + "."))
            if count and (best is None or count > best[0]):
                best = (count, name, m)
    return None if best is None else (best[1], best[2])
