"""The user cache directory (trained originals, dequantized GGUF models)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import platformdirs

__all__ = ["cache_dir", "cache_key", "cached_dir", "read_training_note", "write_training_note"]

TRAINING_FILE = "training.json"


def cache_dir() -> Path:
    """``$MODELPRESS_CACHE`` if set, else the platform's user cache dir (``~/.cache/modelpress``)."""
    env = os.environ.get("MODELPRESS_CACHE")
    return Path(env) if env else Path(platformdirs.user_cache_dir("modelpress"))


def cache_key(parts: dict[str, Any]) -> str:
    """A short stable hash of everything that determines a cached artifact."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def cached_dir(kind: str, key: str, build: Callable[[Path], None]) -> Path:
    """Return ``<cache>/<kind>/<key>``, building it with ``build(tmp_dir)`` if missing.

    The directory is built under a temporary name and renamed into place, so an interrupted
    build never leaves a half-written cache entry.
    """
    final = cache_dir() / kind / key
    if (final / ".complete").exists():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".{key}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        build(tmp)
        (tmp / ".complete").write_text("ok\n")
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def write_training_note(out: Path, result: Any, plan: str | None, metric: str) -> None:
    """Record how a cached original was trained (a ``training.loop.FitResult``: epochs run,
    why it stopped, the epoch kept, the validation curve) next to it, for the report."""
    info = {
        "summary": result.summary(metric),
        "plan": plan,
        "history": result.history,
        "best_epoch": result.best_epoch,
        "stop_reason": result.stop_reason,
        "steps": result.steps,
        "seconds": round(result.seconds, 1),
    }
    (Path(out) / TRAINING_FILE).write_text(json.dumps(info, indent=1) + "\n")


def read_training_note(path: Path) -> str | None:
    """The report's sentence on how the cached original at ``path`` was trained; None for
    caches written before it was recorded (or an unreadable record)."""
    try:
        info = json.loads((Path(path) / TRAINING_FILE).read_text())
        text = f"trained by modelpress on the train split: {info['summary']}"
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return text + (f" ({info['plan']})" if info.get("plan") else "")
