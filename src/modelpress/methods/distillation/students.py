"""Students initialised from their teacher.

- ``layer_drop_student``: DistilBERT's initialisation — the same architecture with fewer
  transformer blocks, each kept block a copy of a teacher block (default: every other one,
  ending with the last; 6 -> 3 keeps blocks 1, 3, 5).
- ``narrow_student``: the same depth at a fraction of the width (hidden size, heads,
  FFN; LeNet hidden units); every student tensor is the leading slice of the teacher's
  (heads keep their size, so the first heads are kept whole).

Both return ordinary models of a class ``modelpress.save`` knows (a ``transformers`` model
with its own config, or a registered architecture), so the student saves and loads like any
other model.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any, cast

import torch
from torch import nn

from ...errors import ConfigError
from ...models.blocks import block_list
from ..base import replace_module

__all__ = ["default_kept_layers", "layer_drop_student", "narrow_student"]


def default_kept_layers(n: int) -> tuple[int, ...]:
    """Every other block, ending with the last: 6 -> (1, 3, 5), 12 -> (1, 3, ..., 11)."""
    return tuple(range(n - 1, -1, -2))[::-1]


def layer_drop_student(teacher: nn.Module, layers: Sequence[int] | None = None) -> nn.Module:
    """A copy of ``teacher`` keeping only the transformer blocks ``layers`` (teacher indices,
    increasing); embeddings, final norm and heads are copied as they are (Sanh et al.,
    DistilBERT, arXiv 1910.01108)."""
    n = len(block_list(teacher, "distill (student: layer-drop)")[1])
    kept = tuple(layers) if layers is not None else default_kept_layers(n)
    if not kept:
        raise ConfigError("layer-drop: keep at least one layer")
    if any(not isinstance(i, int) or not 0 <= i < n for i in kept):
        raise ConfigError(f"layer-drop: layers must be block indices in 0..{n - 1}, got {list(kept)}")
    if list(kept) != sorted(set(kept)):
        raise ConfigError(f"layer-drop: layers must be increasing and distinct, got {list(kept)}")
    student = copy.deepcopy(teacher)
    name, blocks = block_list(student, "distill (student: layer-drop)")
    new = nn.ModuleList([blocks[i] for i in kept])
    replace_module(student, name, new)
    config: Any = student.config  # a transformers config: its fields depend on the model
    config.num_hidden_layers = len(kept)
    if getattr(config, "layer_types", None) is not None:  # per-layer attention kinds (Llama ...)
        config.layer_types = [config.layer_types[i] for i in kept]
    for new_idx, block in enumerate(new):
        for m in block.modules():  # caches index layers by position
            if hasattr(m, "layer_idx"):
                cast(Any, m).layer_idx = new_idx  # nn.Module types attributes as Tensor | Module
    return student


def _slice_into(student: nn.Module, teacher: nn.Module) -> None:
    """Copy the leading slice of every teacher tensor into the student's tensor of the same
    name (student shapes ≤ teacher shapes in every dimension)."""
    t_state = teacher.state_dict()
    with torch.no_grad():
        for key, s in student.state_dict().items():
            t = t_state.get(key)
            if t is None or t.dim() != s.dim() or any(a > b for a, b in zip(s.shape, t.shape, strict=True)):
                raise ConfigError(
                    f"narrow student: cannot initialise '{key}' {list(s.shape)} from the teacher"
                )
            s.copy_(t[tuple(slice(0, d) for d in s.shape)])


def _scaled(value: int, width: float, what: str) -> int:
    out = round(value * width)
    if out < 1:
        raise ConfigError(f"narrow student: width {width} leaves no {what} (teacher has {value})")
    return out


def narrow_student(teacher: nn.Module, width: float) -> nn.Module:
    """The teacher's architecture at ``width`` × its hidden size, attention heads (head size
    kept), key/value heads and FFN size — or, for the LeNet-300-100, its hidden units —
    initialised with leading slices of the teacher's tensors."""
    if not 0 < width < 1:
        raise ConfigError(f"narrow student: width must be in (0, 1), got {width}")
    from ...models.lenet import LeNet300100

    if isinstance(teacher, LeNet300100):
        student: nn.Module = LeNet300100(
            teacher.num_classes,
            hidden=cast("tuple[int, int]", tuple(_scaled(h, width, "hidden units") for h in teacher.hidden)),
        )
        _slice_into(student, teacher)
        return student.to(next(teacher.parameters()).dtype)
    config = getattr(teacher, "config", None)
    if config is None or not hasattr(config, "hidden_size") or not hasattr(config, "num_attention_heads"):
        raise ConfigError(
            f"narrow students are built for transformers models and the LeNet-300-100, not "
            f"{type(teacher).__name__} (give your own student module instead)"
        )
    cfg = copy.deepcopy(config)
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    heads = _scaled(config.num_attention_heads, width, "attention heads")
    cfg.num_attention_heads = heads
    kv = getattr(config, "num_key_value_heads", None)
    if kv is not None:
        cfg.num_key_value_heads = _scaled(kv, width, "key/value heads")
        if heads % cfg.num_key_value_heads:
            raise ConfigError(
                f"narrow student: {heads} attention heads are not a multiple of {cfg.num_key_value_heads} "
                "key/value heads at this width; choose another width"
            )
    cfg.hidden_size = heads * head_dim
    if hasattr(config, "head_dim"):
        cfg.head_dim = head_dim
    if hasattr(config, "intermediate_size"):
        cfg.intermediate_size = _scaled(config.intermediate_size, width, "FFN units")
    student = type(teacher)(cfg)
    _slice_into(student, teacher)
    return student.to(next(teacher.parameters()).dtype).eval()
