"""Shared helpers for text tasks: tokenizing into length-bucketed batches."""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence

import torch

__all__ = ["bucketed_batches", "to_device"]


def bucketed_batches(
    tokenizer,
    texts: Sequence[str],
    labels: Sequence[int] | None,
    batch_size: int,
    *,
    max_length: int,
    shuffle_seed: int | None = None,
) -> Iterator[dict[str, torch.Tensor]]:
    """Batches padded to their own longest text.

    Without shuffling, texts are sorted by length (fast, deterministic evaluation; order is
    restored by the ``index`` entry). With a seed, texts are shuffled, sorted by length
    within chunks of 50 batches, and the batches shuffled (less padding, still random).
    """
    idx = list(range(len(texts)))
    lengths = [len(t) for t in texts]
    if shuffle_seed is None:
        idx.sort(key=lambda i: lengths[i])
        groups = [idx[i : i + batch_size] for i in range(0, len(idx), batch_size)]
    else:
        rng = random.Random(shuffle_seed)
        rng.shuffle(idx)
        chunk = batch_size * 50
        groups = []
        for c in range(0, len(idx), chunk):
            part = sorted(idx[c : c + chunk], key=lambda i: lengths[i])
            groups += [part[i : i + batch_size] for i in range(0, len(part), batch_size)]
        rng.shuffle(groups)
    for g in groups:
        enc = tokenizer(
            [texts[i] for i in g], padding=True, truncation=True, max_length=max_length, return_tensors="pt"
        )
        batch = {k: v for k, v in enc.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
        batch["index"] = torch.tensor(g)
        if labels is not None:
            batch["labels"] = torch.tensor([labels[i] for i in g])
        yield batch


def to_device(batch: dict[str, torch.Tensor], device: torch.device | str) -> dict[str, torch.Tensor]:
    return {k: v.to(device) for k, v in batch.items()}
