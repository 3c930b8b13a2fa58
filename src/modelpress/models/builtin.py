"""Resolve ``--model`` / ``--task`` / ``--data`` into a task adapter.

Built-in names: ``minilm`` (the default: all-MiniLM-L6-v2 sentiment on Rotten Tomatoes),
``smollm2`` (SmolLM2-135M perplexity on convention speeches), ``lenet-300-100`` and
``lenet-5`` (MNIST-5k digits). Each takes the user's data with ``--data`` instead: MiniLM is
fine-tuned on the user's labelled CSV / JSONL (any number of classes, string labels kept as
the model's ``id2label``), SmolLM2 measures perplexity on the user's ``.txt`` / ``.jsonl`` /
``.csv`` text, the LeNets train on the user's images (converted to grey 28x28).

Anything else is a torchvision architecture by name (``resnet18``; ``--weights`` a
safetensors file, or trained here from random init), a local Hugging Face model directory
(text classification, causal LM or image classification, told by its config), or a hub id
(needs a network).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ..data.datasets import (
    TextDataset,
    TextSplits,
    political_speeches,
    read_lm_text,
    read_text_file,
    rotten_tomatoes,
    split_dataset,
)
from ..data.images import ImagePreprocess, ImageSplits, mnist_5k, read_image_data
from ..errors import ConfigError, DataError
from ..registry import Registry
from .causal_lm import CausalLMTask
from .classification import TextClassificationTask
from .sources import ModelSource, local_source, minilm_source, read_config, smollm2_source
from .tasks import TASKS, TaskAdapter, check_count
from .vision import ImageClassificationTask, ImageModel

__all__ = ["BUILTIN_MODELS", "ImageOptions", "resolve_model"]

BUILTIN_MODELS: Registry[Callable[..., TaskAdapter]] = Registry("built-in model")

#: ImageNet's per-channel mean / std: torchvision's convention for its architectures
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class ImageOptions:
    """The user's image options (``--image-size``, ``--image-mean``, ``--image-std``,
    ``--split-seed``), each None where not given."""

    def __init__(
        self,
        size: Sequence[int] | None = None,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        seed: int = 0,
    ) -> None:
        dims = None if size is None else tuple(int(v) for v in size)
        if dims is not None and len(dims) == 1:
            dims = dims * 2
        if dims is not None and (len(dims) != 2 or min(dims) < 1):
            raise ConfigError(f"--image-size takes one size or HEIGHTxWIDTH, each >= 1, got {size!r}")
        self.size: tuple[int, int] | None = None if dims is None else (dims[0], dims[1])
        self.mean = None if mean is None else tuple(float(v) for v in mean)
        self.std = None if std is None else tuple(float(v) for v in std)
        self.seed = seed

    def named(self) -> str:
        """``--image-size applies`` / ``--image-size, --image-std apply``, for messages."""
        given = self.given()
        return f"{', '.join(given)} {'applies' if len(given) == 1 else 'apply'}"

    def given(self) -> list[str]:
        return [n for n, v in (("--image-size", self.size), ("--image-mean", self.mean),
                               ("--image-std", self.std)) if v is not None]  # fmt: skip


def _user_text_splits(data: str) -> TextSplits:
    ds: TextDataset = read_text_file(data, need_labels=True)
    if len(ds) < 50:
        raise DataError(f"{data}: need at least 50 labelled examples to train and test, got {len(ds)}")
    return split_dataset(ds, seed=0, name=Path(data).name)


def _lm_task(
    source: ModelSource, data: str | None, seq_len: int | None, eval_tokens: int | None
) -> TaskAdapter:
    if data is None:
        text, name = political_speeches(), "convention speeches"
        tokens: int | None = eval_tokens or 8192
    else:
        text, name = read_lm_text(data), Path(data).name
        tokens = eval_tokens  # None: as much as the text allows, up to 8,192
    return CausalLMTask(source, text, text_name=name, seq_len=seq_len or 128, eval_tokens=tokens)


@BUILTIN_MODELS.register("minilm")
def _minilm(seq_len: int | None = None, data: str | None = None, **_: object) -> TaskAdapter:
    splits = rotten_tomatoes(seed=0) if data is None else _user_text_splits(data)
    return TextClassificationTask(minilm_source(), splits, seq_len=seq_len or 64)


@BUILTIN_MODELS.register("smollm2")
def _smollm2(
    seq_len: int | None = None, eval_tokens: int | None = None, data: str | None = None, **_: object
) -> TaskAdapter:
    return _lm_task(smollm2_source(), data, seq_len, eval_tokens)


def _lenet(arch: str, data: str | None, image: ImageOptions) -> TaskAdapter:
    if data is None:
        if image.given():
            raise ConfigError(f"{image.named()} to --data images; MNIST-5k is used as it is")
        return ImageClassificationTask(arch, mnist_5k(seed=0))
    if image.size is not None and image.size != (28, 28):
        raise ConfigError(f"{arch} takes 28x28 images (--image-size 28), not {image.size[0]}x{image.size[1]}")
    # the LeNets take 1x28x28: colour images are turned grey and every image resized to 28x28
    prep = ImagePreprocess(channels=1, size=(28, 28), mean=image.mean, std=image.std)
    return ImageClassificationTask(arch, read_image_data(data, prep, seed=image.seed))


@BUILTIN_MODELS.register("lenet-300-100")
def _lenet300(data: str | None = None, image: ImageOptions | None = None, **_: object) -> TaskAdapter:
    return _lenet("lenet-300-100", data, image or ImageOptions())


@BUILTIN_MODELS.register("lenet-5")
def _lenet5(data: str | None = None, image: ImageOptions | None = None, **_: object) -> TaskAdapter:
    return _lenet("lenet-5", data, image or ImageOptions())


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
    # an image classifier, or a vision backbone (ViTModel ...): pixels in, no vocabulary
    if any(a.endswith("ForImageClassification") for a in archs) or (
        "num_channels" in config and "vocab_size" not in config
    ):
        return "image-classification"
    if any(a.endswith(("ForSequenceClassification", "Model")) for a in archs):
        return "text-classification"
    return None


def _torchvision_name(model: str) -> bool:
    """Whether ``model`` is a torchvision builder name (and not a path)."""
    if Path(model).expanduser().exists() or "/" in model or "\\" in model:
        return False
    from .tv import torchvision_models

    try:
        tm = torchvision_models()
        return model in set(tm.list_models(module=tm))
    except ConfigError:  # torchvision missing: not one
        return False


def _image_splits(data: str | None, model: str, prep: ImagePreprocess, seed: int) -> ImageSplits:
    if data is None:
        raise ConfigError(
            f"{model} needs --data: an image folder (one sub-folder per class), an .npz file or a "
            "directory of IDX files (the built-in LeNets default to MNIST-5k)"
        )
    return read_image_data(data, prep, seed=seed)


def _hf_preprocess(source: ModelSource, config: dict, image: ImageOptions) -> ImagePreprocess:
    """Input size, channels and normalisation of a Hugging Face image model: from its
    ``preprocessor_config.json`` where present (``size`` as height / width, shortest edge or
    one number: images are resized to that square or rectangle, without a centre crop;
    ``image_mean`` / ``image_std`` when ``do_normalize``), the config's ``image_size`` /
    ``num_channels``, and the user's options over both."""
    pre: dict[str, Any] = {}
    path = Path(source.path) / "preprocessor_config.json"
    if path.is_file():
        try:
            pre = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise DataError(f"cannot read {path}: {e}") from None
        if not isinstance(pre, dict):
            raise DataError(f"{path} is not a JSON object")
    size: tuple[int, int] | None = None
    raw = pre.get("size") if pre.get("do_resize", True) else None
    if isinstance(raw, dict):
        if isinstance(raw.get("height"), int) and isinstance(raw.get("width"), int):
            size = (raw["height"], raw["width"])
        elif isinstance(raw.get("shortest_edge"), int):
            size = (raw["shortest_edge"], raw["shortest_edge"])
    elif isinstance(raw, int) and not isinstance(raw, bool):
        size = (raw, raw)
    if size is None and isinstance(config.get("image_size"), int):
        size = (config["image_size"], config["image_size"])
    mean = std = None
    if (
        pre.get("do_normalize", True)
        and isinstance(pre.get("image_mean"), list)
        and isinstance(pre.get("image_std"), list)
    ):
        mean, std = tuple(map(float, pre["image_mean"])), tuple(map(float, pre["image_std"]))
    if (
        image.size is not None
        and config.get("model_type") in ("vit", "deit")
        and isinstance(config.get("image_size"), int)
        and image.size != (config["image_size"],) * 2
    ):
        side = config["image_size"]
        raise ConfigError(
            f"{source.name} ({config['model_type']}) takes {side}x{side} images "
            f"(its position embeddings are fixed), not --image-size {image.size[0]}x{image.size[1]}"
        )
    channels = config.get("num_channels", 3)
    if channels not in (1, 3):
        raise ConfigError(f"{source.name} takes {channels}-channel images; modelpress feeds 1 or 3")
    return ImagePreprocess(
        channels=channels,
        size=image.size or size,
        mean=image.mean if image.mean is not None else mean,
        std=image.std if image.std is not None else std,
    )


def resolve_model(
    model: str = "minilm",
    *,
    task: str | None = None,
    data: str | None = None,
    seq_len: int | None = None,
    eval_tokens: int | None = None,
    weights: str | None = None,
    image: ImageOptions | None = None,
) -> TaskAdapter:
    """A task adapter for a built-in name, a torchvision architecture, a local HF directory or
    a hub id; ``data`` the user's data file or folder, ``weights`` a safetensors file for a
    torchvision architecture, ``image`` the image options."""
    image = image or ImageOptions()
    if seq_len is not None:
        check_count(seq_len, "--seq-len")
    if eval_tokens is not None:
        check_count(eval_tokens, "--eval-tokens")
    if task is not None and task not in TASKS:
        raise ConfigError(f"unknown task '{task}' (known: {', '.join(TASKS.names())})")
    if model in BUILTIN_MODELS:
        default = _DEFAULT_TASK[model]
        if task is not None and task != default:
            raise ConfigError(f"built-in model '{model}' runs the {default} task, not {task}")
        if weights is not None:
            raise ConfigError(
                f"--weights applies to a torchvision architecture by name, not built-in '{model}'"
            )
        if default != "image-classification" and image.given():
            raise ConfigError(f"{image.named()} to image models, not '{model}'")
        return BUILTIN_MODELS.get(model)(seq_len=seq_len, eval_tokens=eval_tokens, data=data, image=image)
    if _torchvision_name(model):
        if task is not None and task != "image-classification":
            raise ConfigError(f"torchvision architecture '{model}' runs image-classification, not {task}")
        prep = ImagePreprocess(
            channels=3,
            size=image.size or (224, 224),
            mean=image.mean if image.mean is not None else IMAGENET_MEAN,
            std=image.std if image.std is not None else IMAGENET_STD,
        )
        splits = _image_splits(data, model, prep, image.seed)
        return ImageClassificationTask(ImageModel("torchvision", model, path=weights), splits)
    if weights is not None:
        if task == "image-classification" and not Path(model).expanduser().exists():
            from .tv import torchvision_architecture

            torchvision_architecture(model)  # the unknown-architecture error, with close names
        raise ConfigError(
            f"--weights applies to a torchvision architecture by name (e.g. resnet18), not {model}"
        )
    if task == "image-classification" and not Path(model).expanduser().exists() and "/" not in model:
        from .tv import torchvision_architecture

        torchvision_architecture(model)  # raises: not a built-in, a directory or a torchvision name
    source = local_source(model)
    config = read_config(source)
    task = task or _infer_task(config)
    if task is None and not source.is_local:
        raise ConfigError(
            f"model '{model}' not found: no such local directory (as a hub id it needs "
            "--task text-classification or --task causal-lm)"
        )
    if task is None:
        raise ConfigError(
            f"cannot tell the task of {model}; pass --task text-classification, causal-lm or "
            "image-classification"
        )
    if task != "image-classification" and image.given():
        raise ConfigError(f"{image.named()} to image models, not the {task} task")
    if task == "image-classification":
        if not source.is_local:
            raise ConfigError(f"image model '{model}' must be a local directory (or a torchvision name)")
        prep = _hf_preprocess(source, config, image)
        splits = _image_splits(data, model, prep, image.seed)
        return ImageClassificationTask(ImageModel("hf", source.name, source=source), splits)
    if task == "causal-lm":
        return _lm_task(source, data, seq_len, eval_tokens)
    text_splits = rotten_tomatoes(seed=0) if data is None else _user_text_splits(data)
    return TextClassificationTask(source, text_splits, seq_len=seq_len or 64)
