"""Block-by-block calibration shared by GPTQ and AWQ.

Transformers are stacks of blocks (``model.layers``, ``encoder.layer`` ...). The inputs of
the first block are captured once for the calibration batches; then each block in turn
sees the outputs of the blocks before it *as already quantized*, is quantized, and is run
again to produce the next block's inputs — one forward pass in all, as in the GPTQ paper's
reference implementation. Layers outside the blocks (a classification head, an LM head not
tied to the embeddings) are calibrated by one more pass of the whole model. A model without
a block list (a CNN, an MLP) is calibrated by one pass of the whole model.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from ...data.calibration import CalibrationData, forward_pass, input_hooks, run_forward
from ...models.blocks import blocks_holding
from ..base import CompressContext
from ..transform import Encode, transform_weights

__all__ = ["by_blocks", "quantize_by_blocks"]

# ``observe(name, x)`` is called with the inputs of each layer of a step for every batch,
# then ``encode(name, module)`` gives the layer's format (``transform_weights`` puts it in).
Observe = Callable[[str, torch.Tensor], None]


class _Stop(Exception):
    pass


@contextmanager
def _no_cache(model: nn.Module):
    cfg: Any = getattr(model, "config", None)
    old = getattr(cfg, "use_cache", None)
    if old is not None:
        cfg.use_cache = False  # replaying a block must not grow a KV cache
    try:
        yield
    finally:
        if old is not None:
            cfg.use_cache = old


def _capture_block_inputs(
    model: nn.Module, block: nn.Module, data: CalibrationData, batches: Sequence[Any], progress: bool
) -> list[tuple[tuple[Any, ...], dict[str, Any]]]:
    captured: list[tuple[tuple[Any, ...], dict[str, Any]]] = []

    def hook(_m: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        captured.append((args, kwargs))
        raise _Stop

    handle = block.register_forward_pre_hook(hook, with_kwargs=True)
    model.eval()
    try:
        with torch.no_grad():
            for b in tqdm(batches, desc="capturing block inputs", disable=not progress, leave=False):
                try:
                    forward_pass(data, model, b)
                except _Stop:
                    pass
    finally:
        handle.remove()
    return captured


def _hidden(out: Any) -> torch.Tensor:
    return out[0] if isinstance(out, (tuple, list)) else out


def _with_hidden(
    args: tuple[Any, ...], kwargs: dict[str, Any], h: torch.Tensor
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    if args:
        return (h, *tuple(args[1:])), kwargs
    return args, {**kwargs, "hidden_states": h}


def quantize_by_blocks(
    model: nn.Module,
    targets: dict[str, nn.Module],
    data: CalibrationData,
    batches: Sequence[Any],
    observe: Observe,
    encode: Encode,
    ctx: CompressContext,
    *,
    method: str,
    desc: str,
) -> None:
    """Observe the inputs of ``targets`` block by block and quantize each block's layers
    (``transform_weights`` with ``encode``); inputs of later blocks are computed with the
    earlier blocks already quantized."""

    def apply(items: list[tuple[str, nn.Module]]) -> None:
        transform_weights(model, items, encode, ctx=ctx, method=method, desc=desc)

    by_blocks(model, targets, data, batches, observe, apply, ctx, desc=desc)


def by_blocks(
    model: nn.Module,
    targets: dict[str, nn.Module],
    data: CalibrationData,
    batches: Sequence[Any],
    observe: Observe,
    apply: Callable[[list[tuple[str, nn.Module]]], None],
    ctx: CompressContext,
    *,
    desc: str,
    observe_original: Observe | None = None,
) -> None:
    """Walk the blocks in order: observe the inputs of each block's ``targets`` (computed
    with the earlier blocks already changed), then ``apply(items)`` changes them (a format,
    a replacement module). With ``observe_original``, a copy of each block as it was runs on
    the inputs the *original* model gives it, and ``observe_original(name, x)`` gets each
    target's original input of a batch just before ``observe(name, x)`` gets its input in the
    changed model (so a method can fit the changed layer to the original's outputs).
    Targets outside the blocks are observed by one pass of the whole (changed) model, where
    ``observe_original`` is not called."""
    if not targets:
        return
    was_training = model.training
    model.eval()
    try:
        with _no_cache(model):
            found = blocks_holding(model, list(targets))
            rest = dict(targets)
            if found is not None:
                prefix, blocks = found
                inputs = _capture_block_inputs(model, blocks[0], data, batches, ctx.progress)
                originals = list(inputs) if observe_original is not None else []
                for i, block in enumerate(tqdm(blocks, desc=desc, disable=not ctx.progress, leave=False)):
                    p = f"{prefix}.{i}."
                    mine = {n: m for n, m in targets.items() if n.startswith(p)}
                    for n in mine:
                        rest.pop(n)
                    ref = copy.deepcopy(block) if observe_original is not None else None
                    with torch.no_grad():
                        if mine:
                            ref_mods = (
                                {n: ref.get_submodule(n[len(p) :]) for n in mine} if ref is not None else {}
                            )
                            for j, (args, kwargs) in enumerate(inputs):
                                if ref is not None and observe_original is not None:
                                    with input_hooks(ref_mods, observe_original):
                                        oa, ok = originals[j]
                                        ref(*oa, **ok)
                                with input_hooks(mine, observe):
                                    block(*args, **kwargs)
                            apply(list(mine.items()))
                        # the next block's inputs, through this (now changed) block
                        inputs = [_with_hidden(a, k, _hidden(block(*a, **k))) for a, k in inputs]
                        if ref is not None:
                            originals = [_with_hidden(a, k, _hidden(ref(*a, **k))) for a, k in originals]
                    del ref
            if rest:
                with input_hooks(rest, observe):
                    run_forward(model, data, batches, desc=f"{desc}: other layers", progress=ctx.progress)
                apply(list(rest.items()))
    finally:
        model.train(was_training)
