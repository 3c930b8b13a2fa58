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

__all__ = ["cache_dir", "cache_key", "cached_dir"]


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
