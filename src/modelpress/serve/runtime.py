"""The runtime: runs a loaded model (one per replica) on batches of requests.

``ClassifierRuntime(path)`` opens a modelpress artifact (``modelpress.load``: compressed
layers on the kernels chosen for this machine) or an ONNX export (``OnnxModel``: ONNX
Runtime) with the tokenizer stored next to it, and classifies lists of texts: one padded
batch per call (padding to the longest text of the batch, which is what length buckets
keep small).
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import os
import threading
from pathlib import Path
from typing import Any

import torch

from ..errors import ArtifactError, ConfigError

__all__ = ["CausalLMRuntime", "ClassifierRuntime", "GenRequest", "StepOutput", "open_runtime"]


def _tokenizer_dir(path: Path) -> Path:
    """The artifact's saved tokenizer, or one ``ArtifactError``: serving text needs it."""
    tok_dir = path / "tokenizer"
    if not tok_dir.is_dir():
        raise ArtifactError(
            f"{path} has no tokenizer/ directory: serving text needs the tokenizer saved "
            "with the model (modelpress compress writes it)"
        )
    return tok_dir


class ClassifierRuntime:
    """Text classification on a saved artifact or ONNX export."""

    task = "text-classification"

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        threads: int | None = None,
        max_length: int = 256,
        model: Any = None,
    ) -> None:
        self.path = Path(path)
        if threads:
            torch.set_num_threads(int(threads))
        tok_dir = _tokenizer_dir(self.path)
        from transformers import AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(str(tok_dir))
        if (self.path / "export.json").is_file():
            from ..deploy import OnnxModel

            self.model: Any = OnnxModel(self.path, threads=threads)
            labels = self.model.meta.get("id2label")
            self.backend = "onnxruntime"
        else:
            from ..api import load

            self.model = (model if model is not None else load(self.path)).eval()
            labels = getattr(getattr(self.model, "config", None), "id2label", None)
            self.backend = "torch"
            if getattr(getattr(self.model, "config", None), "num_labels", None) is None:
                raise ConfigError(f"{self.path} is not a classifier (no num_labels in its config)")
        # a classification head: /v1/classify; the encoder's hidden states: /v1/embed (torch only)
        name = type(self.model).__name__
        self.can_classify = self.backend == "onnxruntime" or "For" in name
        self.can_embed = self.backend == "torch"
        self.labels = {int(k): str(v) for k, v in (labels or {}).items()}
        limit = getattr(self.tokenizer, "model_max_length", max_length) or max_length
        self.max_length = int(min(max_length, limit if limit < 10**6 else max_length))
        self._lock = threading.Lock()  # one batch at a time per runtime

    def length(self, text: str) -> int:
        """Tokens of one text (special tokens included), not truncated."""
        return len(self.tokenizer(text, add_special_tokens=True, truncation=False)["input_ids"])

    def run(self, texts: list[str]) -> list[dict[str, Any]]:
        """Label and scores of every text (one padded batch)."""
        enc = self.tokenizer(
            texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        )
        feed = {k: v for k, v in enc.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
        if self.backend == "onnxruntime":
            feed = {k: v for k, v in feed.items() if k in self.model.input_names}
        with self._lock, torch.inference_mode():
            logits = self.model(**feed).logits.float()
        probs = logits.softmax(-1)
        out = []
        for p in probs:
            i = int(p.argmax())
            out.append(
                {
                    "label": self.labels.get(i, str(i)),
                    "score": float(p[i]),
                    "scores": {self.labels.get(j, str(j)): float(v) for j, v in enumerate(p.tolist())},
                }
            )
        return out

    def embed(self, texts: list[str]) -> list[list[float]]:
        """One vector per text: the encoder's last hidden state, mean-pooled over the text's
        tokens (pads excluded by the attention mask) and L2-normalised, so a dot product is
        the cosine similarity (sentence-transformers' ``mean`` pooling + ``normalize``)."""
        enc = self.tokenizer(
            texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        )
        feed = {k: v for k, v in enc.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
        encoder = getattr(self.model, "base_model", self.model)
        with self._lock, torch.inference_mode():
            hidden = encoder(**feed)[0].float()  # (B, L, H)
        m = enc["attention_mask"].unsqueeze(-1).float()  # (B, L, 1)
        pooled = (hidden * m).sum(1) / m.sum(1).clamp(min=1.0)
        return torch.nn.functional.normalize(pooled, dim=-1).tolist()

    def warm_up(self, max_batch_size: int) -> None:
        """Run the batch sizes and lengths serving will see once, so the kernel choices
        (timed at first use) are made before the first request."""
        sizes = sorted({1, min(4, max_batch_size), max_batch_size})
        for n in sizes:
            for words in (4, 48):
                texts = [" ".join(["word"] * words)] * n
                if self.can_classify:
                    self.run(texts)
                if self.can_embed:
                    self.embed(texts)

    def describe(self) -> dict[str, Any]:
        info: dict[str, Any] = {"task": self.task, "backend": self.backend, "max_length": self.max_length}
        info["endpoints"] = [
            e for e, ok in (("/v1/classify", self.can_classify), ("/v1/embed", self.can_embed)) if ok
        ]
        manifest = self.path / ("export.json" if self.backend == "onnxruntime" else "manifest.json")
        try:
            meta = json.loads(manifest.read_text())
            info["recipe"] = meta.get("recipe")
        except (OSError, ValueError):
            pass
        return info


def open_runtime(path: str | os.PathLike, *, threads: int | None = None) -> Any:
    """The runtime for what the artifact holds: a ``*ForCausalLM`` → ``CausalLMRuntime``
    (``/v1/generate``), an image classifier (its ``preprocessing.json``) → ``ImageRuntime``
    (``/v1/classify`` with images), any other encoder → ``ClassifierRuntime`` (``/v1/classify``
    when it has a classification head, ``/v1/embed`` on the torch backend). An ONNX export is
    a classifier of images when its ``export.json`` describes them, else of texts."""
    from .image import ImageRuntime, is_image_model, missing_preprocessing

    path = Path(path)
    if (path / "export.json").is_file():
        from ..deploy import read_export

        if read_export(path).get("image") is not None:
            return ImageRuntime(path, threads=threads)
        return ClassifierRuntime(path, threads=threads)
    if threads:
        torch.set_num_threads(int(threads))
    from ..api import load
    from ..data.images import PREPROCESSING_FILE

    model = load(path).eval()
    if (path / PREPROCESSING_FILE).is_file():
        return ImageRuntime(path, threads=threads, model=model)
    if is_image_model(model):
        raise missing_preprocessing(path)
    if type(model).__name__.endswith("ForCausalLM"):
        return CausalLMRuntime(path, model=model)
    return ClassifierRuntime(path, threads=threads, model=model)


@dataclasses.dataclass
class GenRequest:
    """One generation, as the runtime sees it (the app fills it from the HTTP body)."""

    id: int
    prompt_ids: list[int]
    max_new_tokens: int
    temperature: float = 0.0  # 0: greedy
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None
    generated: list[int] = dataclasses.field(default_factory=list)
    sent: int = 0  # characters of the decoded text already handed out
    finish: str | None = None  # eos | length | stop | cancelled
    generator: torch.Generator | None = None


@dataclasses.dataclass
class StepOutput:
    id: int
    text: str  # new text since the last output of this request
    tokens: int  # tokens generated so far
    finish: str | None  # None: more to come


class CausalLMRuntime:
    """Causal-LM generation with a KV cache and iteration-level (continuous) batching.

    ``step(admit, cancel)`` is one iteration of the decode loop: the cancelled requests leave
    the running batch, every running request gets one token (one forward over the batch, its
    KV cache reused), the admitted ones are prefilled (one left-padded forward) and join the
    batch for the next step, and the finished ones (EOS, ``max_new_tokens``, a stop string,
    the model's last position) leave at once. The running batch is one HF ``DynamicCache``
    whose rows are left-padded to a common length; the attention mask hides the pads and
    position ids count each row's own tokens, so a row computes what it would alone.
    Sampling uses transformers' own ``TemperatureLogitsWarper`` / ``TopPLogitsWarper``.
    Why our own loop and not ``transformers.generation.continuous_batching``: docs/serving.md.
    """

    task = "text-generation"

    def __init__(self, path: str | os.PathLike, *, threads: int | None = None, model: Any = None) -> None:
        self.path = Path(path)
        if threads:
            torch.set_num_threads(int(threads))
        tok_dir = _tokenizer_dir(self.path)
        from transformers import AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(str(tok_dir))
        if model is None:
            from ..api import load

            model = load(self.path).eval()
        if not type(model).__name__.endswith("ForCausalLM"):
            raise ConfigError(f"{self.path} is not a causal LM ({type(model).__name__})")
        self.model = model
        self.backend = "torch"
        cfg = model.config
        self.max_positions = int(getattr(cfg, "max_position_embeddings", 2048) or 2048)
        eos = getattr(model.generation_config, "eos_token_id", None)
        eos = cfg.eos_token_id if eos is None else eos
        self.eos: set[int] = set(eos if isinstance(eos, list) else [] if eos is None else [eos])
        pad = cfg.pad_token_id if cfg.pad_token_id is not None else self.tokenizer.pad_token_id
        self.pad_id = int(pad if pad is not None else next(iter(self.eos), 0))
        # transformers 5.x renames the forward's past_key_values to cache (with a warning)
        params = inspect.signature(model.forward).parameters
        self._cache_kw = "cache" if "cache" in params else "past_key_values"
        # the prefill needs the logits of each row's last position only (not (B, L, vocab))
        self._last_only = {"logits_to_keep": 1} if "logits_to_keep" in params else {}
        self._lock = threading.Lock()
        self.running: list[GenRequest] = []
        self.cache: Any = None  # DynamicCache, rows = self.running
        self.mask: torch.Tensor | None = None  # (B, L) 1 real / 0 left pad, L = cache length
        self.steps = 0

    def encode(self, prompt: str) -> list[int]:
        return list(self.tokenizer(prompt, add_special_tokens=True, truncation=False)["input_ids"])

    # ---- one iteration -------------------------------------------------------------------
    def step(self, admit: list[GenRequest], cancel: set[int] | None = None) -> list[StepOutput]:
        with self._lock, torch.inference_mode():
            out: list[StepOutput] = []
            if cancel:
                for r in self.running:
                    if r.id in cancel:
                        r.finish = "cancelled"
                self._drop_finished()
            if self.running:
                last = torch.tensor([[r.generated[-1]] for r in self.running])
                assert self.mask is not None
                mask = torch.cat([self.mask, torch.ones(len(self.running), 1, dtype=self.mask.dtype)], 1)
                pos = (mask.sum(1, keepdim=True) - 1).clamp(min=0)
                logits = self.model(
                    input_ids=last,
                    attention_mask=mask,
                    position_ids=pos,
                    **{self._cache_kw: self.cache},
                    use_cache=True,
                ).logits[:, -1]
                self.mask = mask
                out += self._advance(self.running, logits)
            if admit:
                out += self._prefill(admit)
            self._drop_finished()
            self.steps += 1
            return out

    def reset(self) -> None:
        """Drop the running batch (after a failed step)."""
        with self._lock:
            self.running, self.cache, self.mask = [], None, None

    def _prefill(self, reqs: list[GenRequest]) -> list[StepOutput]:
        from transformers import DynamicCache

        width = max(len(r.prompt_ids) for r in reqs)
        ids = torch.full((len(reqs), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros(len(reqs), width, dtype=torch.long)
        for i, r in enumerate(reqs):  # left padding: every row's last token is at the end
            ids[i, width - len(r.prompt_ids) :] = torch.tensor(r.prompt_ids)
            mask[i, width - len(r.prompt_ids) :] = 1
            if r.seed is not None:
                r.generator = torch.Generator().manual_seed(int(r.seed))
        pos = (mask.cumsum(1) - 1).clamp(min=0)
        cache = DynamicCache()
        logits = self.model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=pos,
            use_cache=True,
            **{self._cache_kw: cache},
            **self._last_only,
        ).logits[:, -1]
        outs = self._advance(reqs, logits)
        self._merge(reqs, cache, mask)
        return outs

    def _merge(self, reqs: list[GenRequest], cache: Any, mask: torch.Tensor) -> None:
        """The prefilled rows join the running batch: both left-padded to the longer cache."""
        if not self.running:
            self.running, self.cache, self.mask = list(reqs), cache, mask
            return
        assert self.mask is not None
        old_len, new_len = self.mask.shape[1], mask.shape[1]
        width = max(old_len, new_len)

        def pad(t: torch.Tensor, n: int) -> torch.Tensor:  # (B, H, L, D) or (B, L): n zeros on the left of L
            if n == 0:
                return t
            dim = -2 if t.dim() == 4 else -1
            shape = list(t.shape)
            shape[dim] = n
            return torch.cat([t.new_zeros(shape), t], dim=dim)

        for old, new in zip(self.cache.layers, cache.layers, strict=True):
            old.keys = torch.cat([pad(old.keys, width - old_len), pad(new.keys, width - new_len)], 0)
            old.values = torch.cat([pad(old.values, width - old_len), pad(new.values, width - new_len)], 0)
        self.mask = torch.cat([pad(self.mask, width - old_len), pad(mask, width - new_len)], 0)
        self.running += reqs

    def _drop_finished(self) -> None:
        """Finished rows leave the batch now; pad columns no row needs any more are cut off."""
        keep = [i for i, r in enumerate(self.running) if r.finish is None]
        if len(keep) == len(self.running):
            return
        self.running = [self.running[i] for i in keep]
        if not self.running:
            self.cache = self.mask = None
            return
        assert self.mask is not None
        idx = torch.tensor(keep)
        mask = self.mask[idx]
        lead = int((mask.sum(0) == 0).long().cumprod(0).sum())  # leading all-pad columns
        self.mask = mask[:, lead:]
        for layer in self.cache.layers:
            layer.keys = layer.keys[idx, :, lead:]
            layer.values = layer.values[idx, :, lead:]

    def _advance(self, reqs: list[GenRequest], logits: torch.Tensor) -> list[StepOutput]:
        """Pick each row's next token (greedy or sampled) and say what text it adds."""
        from transformers.generation.logits_process import TemperatureLogitsWarper, TopPLogitsWarper

        logits = logits.float()
        nxt = logits.argmax(-1).tolist()
        for i, r in enumerate(reqs):
            if r.temperature > 0:
                row = logits[i : i + 1]
                prev = torch.tensor([r.prompt_ids + r.generated])
                row = TemperatureLogitsWarper(r.temperature)(prev, row)
                if r.top_p < 1.0:
                    row = TopPLogitsWarper(r.top_p)(prev, row)
                nxt[i] = int(torch.multinomial(row.softmax(-1), 1, generator=r.generator))
        out = []
        for r, t in zip(reqs, nxt, strict=True):
            r.generated.append(int(t))
            if int(t) in self.eos:
                r.finish = "eos"
            elif len(r.generated) >= r.max_new_tokens:
                r.finish = "length"
            elif len(r.prompt_ids) + len(r.generated) >= self.max_positions:
                r.finish = "length"
            out.append(StepOutput(r.id, self._text(r), len(r.generated), r.finish))
        return out

    def _text(self, r: GenRequest) -> str:
        """New text of ``r`` since its last output. A stop string ends the request and is not
        included; text that could still become a stop string, or an incomplete UTF-8
        character, is held back until it is decided."""
        ids = r.generated[:-1] if r.finish == "eos" else r.generated
        full = str(self.tokenizer.decode(ids, skip_special_tokens=True))
        if r.stop:
            hits = [i for i in (full.find(s, max(0, r.sent - len(s))) for s in r.stop) if i >= 0]
            if hits:
                r.finish = "stop"
                full = full[: min(hits)]
        end = len(full)
        if r.finish is None:
            if r.stop:
                end -= max(len(s) for s in r.stop) - 1
            while end > r.sent and full[end - 1] == "\ufffd":
                end -= 1
        end = max(end, r.sent)
        text, r.sent = full[r.sent : end], end
        return text

    def generate_one(self, req: GenRequest) -> str:
        """The whole answer of one request, run alone (reference for tests, the benchmark)."""
        texts = []
        admit = [req]
        while True:
            for o in self.step(admit):
                texts.append(o.text)
            admit = []
            if req.finish is not None:
                return "".join(texts)

    def warm_up(self, max_batch_size: int) -> None:
        """Prefill and a few decode steps at 1 and ``max_batch_size`` rows (kernels are timed
        at first use)."""
        ids = self.encode("warm up the kernels")
        for n in sorted({1, max_batch_size}):
            reqs = [GenRequest(-1 - i, ids, max_new_tokens=3) for i in range(n)]
            admit = reqs
            while any(r.finish is None for r in reqs):
                self.step(admit)
                admit = []

    def describe(self) -> dict[str, Any]:
        info: dict[str, Any] = {
            "task": self.task,
            "backend": self.backend,
            "max_positions": self.max_positions,
        }
        try:
            info["recipe"] = json.loads((self.path / "manifest.json").read_text()).get("recipe")
        except (OSError, ValueError):
            pass
        return info
