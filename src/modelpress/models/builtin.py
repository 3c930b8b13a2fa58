"""Resolve ``--model`` / ``--task`` / ``--data`` into a task adapter.

Built-in names: ``minilm`` (the default: all-MiniLM-L6-v2 sentiment on Rotten Tomatoes),
``smollm2`` (SmolLM2-135M perplexity on convention speeches), ``lenet-300-100`` and
``lenet-5`` (MNIST-5k digits). Anything else is a local
Hugging Face model directory, or a hub id (needs a network).
"""

from __future__ import annotations

from collections.abc import Callable

from ..data.datasets import TextDataset, political_speeches, read_text_file, rotten_tomatoes, split_dataset
from ..data.images import mnist_5k
from ..errors import ConfigError, DataError
from ..registry import Registry
from .causal_lm import CausalLMTask
from .classification import TextClassificationTask
from .sources import local_source, minilm_source, read_config, smollm2_source
from .tasks import TASKS, TaskAdapter, check_count
from .vision import ImageClassificationTask

__all__ = ["BUILTIN_MODELS", "resolve_model"]

BUILTIN_MODELS: Registry[Callable[..., TaskAdapter]] = Registry("built-in model")


@BUILTIN_MODELS.register("minilm")
def _minilm(seq_len: int | None = None, **_: object) -> TaskAdapter:
    return TextClassificationTask(minilm_source(), rotten_tomatoes(seed=0), seq_len=seq_len or 64)


@BUILTIN_MODELS.register("smollm2")
def _smollm2(seq_len: int | None = None, eval_tokens: int | None = None, **_: object) -> TaskAdapter:
    return CausalLMTask(
        smollm2_source(),
        political_speeches(),
        text_name="convention speeches",
        seq_len=seq_len or 128,
        eval_tokens=eval_tokens or 8192,
    )


@BUILTIN_MODELS.register("lenet-300-100")
def _lenet300(**_: object) -> TaskAdapter:
    return ImageClassificationTask("lenet-300-100", mnist_5k(seed=0))


@BUILTIN_MODELS.register("lenet-5")
def _lenet5(**_: object) -> TaskAdapter:
    return ImageClassificationTask("lenet-5", mnist_5k(seed=0))


_DEFAULT_TASK = {
    "minilm": "text-classification",
    "smollm2": "causal-lm",
    "lenet-300-100": "image-classification",
    "lenet-5": "image-classification",
}


def _infer_task(config: dict) -> str | None:
    archs = config.get("architectures") or []
    archs = [a for a in archs if isinstance(a, str)] if isinstance(archs, list) else []
    if any(a.endswith("ForCausalLM") for a in archs):
        return "causal-lm"
    if any(a.endswith(("ForSequenceClassification", "Model")) for a in archs):
        return "text-classification"
    return None


def resolve_model(
    model: str = "minilm",
    *,
    task: str | None = None,
    data: str | None = None,
    seq_len: int | None = None,
    eval_tokens: int | None = None,
) -> TaskAdapter:
    """A task adapter for a built-in name, a local HF directory or a hub id."""
    if seq_len is not None:
        check_count(seq_len, "--seq-len")
    if eval_tokens is not None:
        check_count(eval_tokens, "--eval-tokens")
    if task is not None and task not in TASKS:
        raise ConfigError(f"unknown task '{task}' (known: {', '.join(TASKS.names())})")
    if model in BUILTIN_MODELS:
        if task is not None and task != _DEFAULT_TASK[model]:
            raise ConfigError(f"built-in model '{model}' runs the {_DEFAULT_TASK[model]} task, not {task}")
        if data is not None:
            raise ConfigError(
                f"built-in model '{model}' has its own data; pass a model directory to use --data"
            )
        return BUILTIN_MODELS.get(model)(seq_len=seq_len, eval_tokens=eval_tokens)
    source = local_source(model)
    task = task or _infer_task(read_config(source))
    if task is None and not source.is_local:
        raise ConfigError(
            f"model '{model}' not found: no such local directory (as a hub id it needs "
            "--task text-classification or --task causal-lm)"
        )
    if task is None:
        raise ConfigError(
            f"cannot tell the task of {model}; pass --task text-classification or --task causal-lm"
        )
    if task == "causal-lm":
        if data is None:
            text, name = political_speeches(), "convention speeches"
        else:
            lm_ds = read_text_file(data, need_labels=False)
            text, name = "\n\n".join(lm_ds.texts), str(data)
        return CausalLMTask(
            source, text, text_name=name, seq_len=seq_len or 128, eval_tokens=eval_tokens or 8192
        )
    if data is None:
        splits = rotten_tomatoes(seed=0)
    else:
        ds: TextDataset = read_text_file(data, need_labels=True)
        if len(ds) < 50:
            raise DataError(f"{data}: need at least 50 labelled examples to train and test, got {len(ds)}")
        splits = split_dataset(ds, seed=0, name=str(data))
    return TextClassificationTask(source, splits, seq_len=seq_len or 64)
