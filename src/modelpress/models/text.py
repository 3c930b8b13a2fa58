"""Shared helpers for text tasks: tokenizing into length-bucketed batches."""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from typing import Any

import torch

from ..errors import ConfigError

__all__ = ["bucketed_batches", "check_chat_templates", "to_device"]


def check_chat_templates(tokenizer: Any, what: str = "the tokenizer") -> None:
    """Refuse (``ConfigError``), before anything is written, a tokenizer that
    ``save_pretrained`` would write outside its directory or fail to write: a Hugging Face
    tokenizer may hold several named chat templates (``{"default": ..., "tool_use": ...}``),
    each saved as ``additional_chat_templates/<name>.jinja``, so every name must be a plain
    file name (not empty, no '/' or '\\', no '..', no NUL) and every template text."""
    templates = getattr(tokenizer, "chat_template", None)
    if templates is None or isinstance(templates, str):
        return
    if not isinstance(templates, dict):
        raise ConfigError(
            f"{what} holds a chat template of type {type(templates).__name__}, not text or named texts; "
            "refusing to save it"
        )
    for name, template in templates.items():
        if (
            not isinstance(name, str)
            or not name.strip()
            or any(c in name for c in ("/", "\\", "\x00"))
            or ".." in name
        ):
            raise ConfigError(
                f"{what} names a chat template {name!r}: each is saved as additional_chat_templates/"
                "<name>.jinja, so a name must be a plain file name (not empty, no '/', '\\', '..' or NUL); "
                "refusing before anything is written"
            )
        if not isinstance(template, str):
            raise ConfigError(
                f"{what} holds the chat template {name!r} as a {type(template).__name__}, not text; "
                "refusing before anything is written"
            )


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
