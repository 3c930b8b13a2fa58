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

from collections.abc import Callable, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from .calibration import input_hooks, run_forward

__all__ = ["find_blocks", "quantize_by_blocks"]

# (name -> module) of the layers of one step, and a function that receives them with their
# inputs observed: ``observe(name, x)`` was called for every batch before ``quantize``.
Observe = Callable[[str, torch.Tensor], None]
Quantize = Callable[[dict[str, nn.Module]], None]


class _Stop(Exception):
    pass


def find_blocks(model: nn.Module, names: Sequence[str]) -> tuple[str, nn.ModuleList] | None:
    """The ModuleList holding the most of the given layers (the transformer blocks)."""
    best: tuple[int, str, nn.ModuleList] | None = None
    for name, m in model.named_modules():
        if isinstance(m, nn.ModuleList) and len(m) > 1 and name:
            count = sum(1 for n in names if n.startswith(name + "."))
            if count and (best is None or count > best[0]):
                best = (count, name, m)
    return None if best is None else (best[1], best[2])


@contextmanager
def _no_cache(model: nn.Module):
    cfg = getattr(model, "config", None)
    old = getattr(cfg, "use_cache", None)
    if old is not None:
        cfg.use_cache = False  # replaying a block must not grow a KV cache
    try:
        yield
    finally:
        if old is not None:
            cfg.use_cache = old


def _capture_block_inputs(
    model: nn.Module, block: nn.Module, data: object, batches: Sequence[Any], progress: bool
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
                    data.loss(model, b)  # type: ignore[attr-defined]
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
    data: object,
    batches: Sequence[Any],
    observe: Observe,
    quantize: Quantize,
    *,
    desc: str,
    progress: bool = True,
) -> None:
    """Observe the inputs of ``targets`` block by block and quantize each block's layers.

    ``quantize`` replaces the layers it is given in ``model``; inputs of later blocks are
    computed with the earlier blocks already quantized.
    """
    was_training = model.training
    model.eval()
    try:
        with _no_cache(model):
            found = find_blocks(model, list(targets))
            rest = dict(targets)
            if found is not None:
                prefix, blocks = found
                inputs = _capture_block_inputs(model, blocks[0], data, batches, progress)
                for i, block in enumerate(tqdm(blocks, desc=desc, disable=not progress, leave=False)):
                    p = f"{prefix}.{i}."
                    mine = {n: m for n, m in targets.items() if n.startswith(p)}
                    for n in mine:
                        rest.pop(n)
                    with torch.no_grad():
                        if mine:
                            with input_hooks(mine, observe):
                                for args, kwargs in inputs:
                                    block(*args, **kwargs)
                            quantize(mine)
                        # the next block's inputs, through this (now quantized) block
                        inputs = [_with_hidden(a, k, _hidden(block(*a, **k))) for a, k in inputs]
            if rest:
                with input_hooks(rest, observe):
                    run_forward(model, data, batches, desc=f"{desc}: other layers", progress=progress)
                quantize(rest)
    finally:
        model.train(was_training)
