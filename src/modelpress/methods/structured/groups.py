"""Dependency groups: what must shrink together when one head, neuron, channel or block goes.

Removing an attention head removes its rows of the query, key and value projections and the
same columns of the output projection; removing an FFN neuron removes a row of the up (and
gate) projection and a column of the down projection; removing a conv filter removes the
filter, its BatchNorm entries and the next layer's input channels (after a flatten, a block
of ``H*W`` columns of the first Linear). This is Torch-Pruning's dependency graph (Fang et
al. 2023, "DepGraph: Towards Any Structural Pruning", arXiv 2301.12900), kept to the
patterns modelpress knows; anything else is refused with a clear error rather than guessed.

Pruning happens in place on the modules (weights re-assigned, ``in_features`` etc. updated),
so module references stay valid and the result is an ordinary dense model; ``save`` records
the changed dims in the manifest's ``structure`` entry.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from typing import Any, cast

import torch
from torch import nn

from ...errors import ConfigError
from ...models.blocks import block_list
from ..base import matches, replace_module

__all__ = [
    "Group",
    "Part",
    "attention_groups",
    "check_untied",
    "ffn_groups",
    "prune_group",
    "remove_blocks",
]

log = logging.getLogger(__name__)

_PRUNABLE = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.BatchNorm1d, nn.BatchNorm2d, nn.PReLU)


@dataclasses.dataclass(frozen=True)
class Part:
    """One module's share of a group: ``dim`` 0 = its outputs (weight rows, bias, norm
    statistics), 1 = its inputs (weight columns). Group ``g`` is the ``g``-th of ``n`` equal
    contiguous blocks along that dim."""

    name: str
    module: nn.Module
    dim: int


@dataclasses.dataclass
class Group:
    """``n`` removable units (heads, KV groups, neurons, channels) of one structure.

    probe: (module name, module, "input" | "output", channel dim) whose activation measures
    the units for activation importance. attrs: int attributes to set after pruning, as
    ``(module, attr, per_unit)``: the new value is ``kept units * per_unit``.
    """

    name: str
    n: int
    parts: list[Part]
    probe: tuple[str, nn.Module, str, int]
    attrs: list[tuple[nn.Module, str, int]] = dataclasses.field(default_factory=list)
    unit: str = "unit"

    def tensors(self) -> list[tuple[torch.Tensor, int]]:
        """Every tensor of the group with the dim its units split: ``(tensor, dim)``."""
        return [(t, d) for p in self.parts for t, d in _part_tensors(p.module, p.dim)]

    def raw_tensors(self) -> list[torch.Tensor]:
        """The whole tensors (parameters and buffers) the group cuts into."""
        return [t for p in self.parts for t, _ in _part_tensors(p.module, p.dim)]

    def params(self) -> list[nn.Parameter]:
        """The parameters among ``tensors()`` (what a Taylor score needs gradients for)."""
        return [t for t, _ in self.tensors() if isinstance(t, nn.Parameter)]

    def grad_parts(self) -> list[tuple[torch.Tensor, torch.Tensor, int]]:
        """``(weight, grad, dim)`` of every parameter of the group that has a gradient."""
        return [
            (t, t.grad, d) for t, d in self.tensors() if isinstance(t, nn.Parameter) and t.grad is not None
        ]

    def selected(self, include: Sequence[str], exclude: Sequence[str]) -> bool:
        """Whether include / exclude patterns select this group (they match its name)."""
        return matches(self.name, include, exclude)


def _weight(m: nn.Module) -> torch.Tensor:
    """``m.weight`` of a layer known to have one (``nn.Module`` types attributes loosely)."""
    return cast(torch.Tensor, m.weight)


def _part_tensors(m: nn.Module, dim: int) -> list[tuple[torch.Tensor, int]]:
    if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
        names = ["weight", "bias", "running_mean", "running_var"]
        return [(t, 0) for n in names if (t := getattr(m, n, None)) is not None]
    if isinstance(m, nn.PReLU):  # one slope per channel: (channels,)
        return [(_weight(m), 0)]
    out = [(_weight(m), dim)]
    if dim == 0 and getattr(m, "bias", None) is not None:
        out.append((cast(torch.Tensor, m.bias), 0))
    return out


def _require_layer(name: str, m: object, what: str) -> nn.Module:
    if not isinstance(m, _PRUNABLE):
        raise ConfigError(
            f"{what}: '{name}' is a {type(m).__name__}, not a plain layer; apply structured pruning "
            "before methods that replace layers (quantization, clustering)"
        )
    return m


def check_untied(model: nn.Module, groups: Sequence[Group], what: str) -> None:
    """Refuse groups whose tensors are shared with another module (tied weights): pruning
    one side would silently change or break the other."""
    owners: dict[int, list[str]] = {}
    for mname, m in model.named_modules(remove_duplicate=False):
        for pname, p in [*m._parameters.items(), *m._buffers.items()]:
            if p is not None:
                owners.setdefault(id(p), []).append(f"{mname}.{pname}" if mname else pname)
    for g in groups:
        for t in g.raw_tensors():
            names = owners.get(id(t), [])
            if len(names) > 1:
                raise ConfigError(
                    f"{what}: {names[0]} is tied to {', '.join(names[1:])}; structured pruning "
                    f"would change both. Untie the weights or exclude '{g.name}'"
                )


def _index(size: int, n: int, keep: Sequence[int], device: torch.device) -> torch.Tensor:
    block = size // n
    return torch.cat([torch.arange(k * block, (k + 1) * block, device=device) for k in keep])


def _shrink(m: nn.Module, dim: int, n: int, keep: Sequence[int]) -> None:
    """Keep the blocks ``keep`` (of ``n``) of ``m`` along ``dim``, in place."""
    bn = isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d, nn.PReLU))  # per-channel vectors only
    for pname in ("weight", "bias", "running_mean", "running_var"):
        t = getattr(m, pname, None)
        if not isinstance(t, torch.Tensor):
            continue
        if bn or pname == "bias":
            if not bn and dim != 0:
                continue  # a layer's bias belongs to its outputs
            d = 0
        elif pname == "weight":
            d = dim
        else:
            continue
        idx = _index(t.shape[d], n, keep, t.device)
        new = t.detach().index_select(d, idx).clone()
        if isinstance(t, nn.Parameter):
            setattr(m, pname, nn.Parameter(new, requires_grad=t.requires_grad))
        else:
            m._buffers[pname] = new
    w = cast("torch.Tensor | None", m.weight)  # None only for a norm without affine parameters
    if isinstance(m, nn.Linear):
        assert w is not None
        m.out_features, m.in_features = w.shape
    elif isinstance(m, (nn.Conv1d, nn.Conv2d)):
        assert w is not None
        m.out_channels, m.in_channels = w.shape[0], w.shape[1] * m.groups
    elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
        m.num_features = (w if w is not None else cast(torch.Tensor, m.running_mean)).shape[0]
    elif isinstance(m, nn.PReLU):
        assert w is not None
        m.num_parameters = w.shape[0]


def prune_group(group: Group, keep: Sequence[int]) -> None:
    """Remove every unit of ``group`` not in ``keep`` (sorted indices), in place."""
    if not keep:
        raise ConfigError(f"pruning would remove every {group.unit} of '{group.name}'; lower the fraction")
    if len(keep) == group.n:
        return
    for part in group.parts:
        _shrink(part.module, part.dim, group.n, keep)
    for mod, attr, per_unit in group.attrs:
        setattr(mod, attr, len(keep) * per_unit)
    group.n = len(keep)


# -- transformers: attention heads, FFN neurons, blocks ------------------------------------


def attention_groups(model: nn.Module) -> list[Group]:
    """One group per attention module: its heads (BERT-style) or, with grouped-query
    attention (Llama-style), its key/value groups — one KV head and the query heads that
    share it, so the query-to-KV ratio ``num_key_value_groups`` stays the same."""
    what = "prune-heads"
    groups = []
    for name, m in model.named_modules():
        sa, out = getattr(m, "self", None), getattr(getattr(m, "output", None), "dense", None)
        if sa is not None and out is not None and all(hasattr(sa, a) for a in ("query", "key", "value")):
            # BERT-style: BertAttention.self (query/key/value) + BertAttention.output.dense
            heads, d = int(sa.num_attention_heads), int(sa.attention_head_size)
            sname = f"{name}.self"
            parts = [
                Part(f"{sname}.{p}", _require_layer(f"{sname}.{p}", getattr(sa, p), what), 0)
                for p in ("query", "key", "value")
            ]
            parts.append(Part(f"{name}.output.dense", _require_layer(f"{name}.output.dense", out, what), 1))
            groups.append(
                Group(
                    sname,
                    heads,
                    parts,
                    (f"{name}.output.dense", out, "input", -1),
                    [(sa, "num_attention_heads", 1), (sa, "all_head_size", d)],
                    unit="head",
                )
            )
        elif all(hasattr(m, a) for a in ("q_proj", "k_proj", "v_proj", "o_proj", "head_dim")):
            # Llama-style: q/k/v/o_proj; with GQA a unit is a KV head and its query heads
            hd = int(m.head_dim)
            k = _require_layer(f"{name}.k_proj", m.k_proj, what)
            n_kv = _weight(k).shape[0] // hd
            parts = [
                Part(f"{name}.{p}", _require_layer(f"{name}.{p}", getattr(m, p), what), 0)
                for p in ("q_proj", "k_proj", "v_proj")
            ]
            parts.append(Part(f"{name}.o_proj", _require_layer(f"{name}.o_proj", m.o_proj, what), 1))
            group_size = _weight(parts[0].module).shape[0] // (n_kv * hd)
            attrs = [
                (m, a, per)
                for a, per in (("num_heads", group_size), ("num_key_value_heads", 1))
                if isinstance(getattr(m, a, None), int)
            ]
            groups.append(
                Group(
                    name,
                    n_kv,
                    parts,
                    (f"{name}.o_proj", m.o_proj, "input", -1),
                    attrs,
                    unit="head" if group_size == 1 else "key/value group",
                )
            )
    if not groups:
        raise ConfigError(
            f"{what} found no attention it knows in {type(model).__name__}: it supports BERT-style "
            "(query/key/value + output.dense) and Llama-style (q_proj/k_proj/v_proj/o_proj) attention"
        )
    return groups


def ffn_groups(model: nn.Module) -> list[Group]:
    """One group per feed-forward block: its intermediate neurons (BERT: intermediate.dense
    rows + output.dense columns; Llama: gate/up rows + down columns)."""
    what = "prune-ffn"
    groups = []
    for name, m in model.named_modules():
        inter, out = (
            getattr(getattr(m, "intermediate", None), "dense", None),
            getattr(getattr(m, "output", None), "dense", None),
        )
        if inter is not None and out is not None:
            parts = [
                Part(
                    f"{name}.intermediate.dense", _require_layer(f"{name}.intermediate.dense", inter, what), 0
                ),
                Part(f"{name}.output.dense", _require_layer(f"{name}.output.dense", out, what), 1),
            ]
            n = _weight(parts[0].module).shape[0]
            groups.append(Group(name, n, parts, (f"{name}.output.dense", out, "input", -1), unit="neuron"))
        elif hasattr(m, "up_proj") and hasattr(m, "down_proj"):
            ups = [p for p in ("gate_proj", "up_proj") if hasattr(m, p)]
            parts = [Part(f"{name}.{p}", _require_layer(f"{name}.{p}", getattr(m, p), what), 0) for p in ups]
            parts.append(Part(f"{name}.down_proj", _require_layer(f"{name}.down_proj", m.down_proj, what), 1))
            n = _weight(parts[0].module).shape[0]
            attrs = (
                [(m, "intermediate_size", 1)]
                if isinstance(getattr(m, "intermediate_size", None), int)
                else []
            )
            groups.append(
                Group(name, n, parts, (f"{name}.down_proj", m.down_proj, "input", -1), attrs, unit="neuron")
            )
    if not groups:
        raise ConfigError(
            f"{what} found no feed-forward block it knows in {type(model).__name__}: it supports "
            "BERT-style (intermediate.dense + output.dense) and Llama-style (gate/up/down_proj) blocks"
        )
    return groups


def remove_blocks(model: nn.Module, keep: Sequence[int]) -> None:
    """Keep only the blocks ``keep`` (sorted), renumber their cache ``layer_idx`` and update
    ``config.num_hidden_layers`` (and ``config.layer_types``) so the config builds the same."""
    name, blocks = block_list(model, "prune-layers")
    if not keep:
        raise ConfigError("prune-layers would remove every block; lower the fraction")
    kept = nn.ModuleList([blocks[i] for i in keep])
    for new_idx, block in enumerate(kept):
        for sub in block.modules():
            if isinstance(getattr(sub, "layer_idx", None), int):
                cast(Any, sub).layer_idx = new_idx  # nn.Module types attributes as Tensor | Module
    replace_module(model, name, kept)
    config: Any = model.config  # shared by every submodule of a transformers model
    layer_types = getattr(config, "layer_types", None)
    if isinstance(layer_types, list) and len(layer_types) == len(blocks):
        config.layer_types = [layer_types[i] for i in keep]
    config.num_hidden_layers = len(keep)
