"""modelpress's C++ CPU kernels (``csrc/*.cpp``), compiled once per machine and torch.

Why C++ (docs/kernels.md): at one row per call (LM decode) the eager W8A8 kernel spends
~3x the GEMM's time dispatching its dozen small tensor ops from Python; one C++ call with
the quantization and the rescale as loops runs the same ``at::_int_mm`` at close to its own
cost, with bitwise the same output.

The build uses torch's own ``torch.utils.cpp_extension`` (g++ and ninja, ~30 s) into the
user cache dir, keyed by the sources, the flags, torch and Python, so a later torch or an
edited source builds anew and a stale library is never loaded. ``make setup`` builds it
(``python -m modelpress.kernels.ext``); otherwise the first use builds it. Where no compiler
is found, or ``MODELPRESS_EXT=0``, the fused kernels are simply not candidates and the
dispatcher uses the others (a one-time warning says why). Two processes building at once
are serialised by torch's lock file in the build directory.
"""

from __future__ import annotations

import hashlib
import importlib.machinery
import importlib.util
import logging
import os
import shutil
import sys
import threading
from pathlib import Path
from typing import Any

import torch

__all__ = ["available", "build_dir", "load", "status"]

log = logging.getLogger(__name__)

SOURCES = ("fused_cpu.cpp",)
# -ffp-contract=off: no fused multiply-add, bitwise the eager kernels' floats; -fopenmp: ATen's
# at::parallel_for is an OpenMP pragma in a header, compiled out without it (one thread)
CFLAGS = ("-O3", "-ffp-contract=off", "-fopenmp")
LDFLAGS = ("-fopenmp",)

_lock = threading.Lock()
_module: Any = None
_error: str | None = None
_tried = False


def _sources() -> list[Path]:
    return [Path(__file__).with_name("csrc") / s for s in SOURCES]


def _tag() -> str:
    h = hashlib.sha256()
    for p in _sources():
        h.update(p.read_bytes())
    h.update(repr((CFLAGS, LDFLAGS, torch.__version__, sys.version_info[:2], sys.platform)).encode())
    return h.hexdigest()[:16]


def build_dir() -> Path:
    """Where the library of these sources, flags, torch and Python lives."""
    env = os.environ.get("MODELPRESS_EXT_DIR")
    if env:
        root = Path(env)
    else:
        import platformdirs

        root = Path(platformdirs.user_cache_dir("modelpress")) / "ext"
    return root / _tag()


def _name() -> str:
    return f"modelpress_fused_{_tag()[:10]}"


def _import(path: Path) -> Any:
    loader = importlib.machinery.ExtensionFileLoader(_name(), str(path))
    spec = importlib.util.spec_from_file_location(_name(), path, loader=loader)
    assert spec is not None
    mod = importlib.util.module_from_spec(spec)
    loader.exec_module(mod)
    return mod


def _build(out: Path) -> Any:
    from torch.utils import cpp_extension

    if shutil.which("ninja") is None:  # the ninja wheel's binary sits next to the venv's python
        os.environ["PATH"] = str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", "")
    if shutil.which(os.environ.get("CXX", "c++")) is None and shutil.which("g++") is None:
        raise RuntimeError("no C++ compiler (c++ / g++) on PATH")
    out.mkdir(parents=True, exist_ok=True)
    print("modelpress: building its C++ CPU kernels once for this machine (~30 s) ...", file=sys.stderr)
    return cpp_extension.load(
        _name(),
        [str(p) for p in _sources()],
        extra_cflags=list(CFLAGS),
        extra_ldflags=list(LDFLAGS),
        build_directory=str(out),
        verbose=False,
    )


def load(build: bool = True) -> Any:
    """The compiled module, or None where it cannot be had (the reason: ``status()``)."""
    global _module, _error, _tried
    if _tried:
        return _module
    with _lock:
        if _tried:
            return _module
        if os.environ.get("MODELPRESS_EXT", "1").strip().lower() in ("0", "false", "no", "off"):
            _error = "disabled by MODELPRESS_EXT=0"
        else:
            out = build_dir()
            lib = out / f"{_name()}{importlib.machinery.EXTENSION_SUFFIXES[0]}"
            alt = out / f"{_name()}.so"
            try:
                found = lib if lib.is_file() else alt if alt.is_file() else None
                if found is not None:
                    _module = _import(found)
                elif build:
                    _module = _build(out)
                else:
                    _error = "not built yet (python -m modelpress.kernels.ext builds it)"
            except Exception as e:  # any build or load failure: the other kernels run
                _error = f"{type(e).__name__}: {str(e).strip().splitlines()[-1] if str(e).strip() else e}"
                _module = None
            if _module is None and _error and build:
                log.warning("modelpress's C++ kernels are not available (%s); the others run", _error)
        _tried = True
        return _module


def available() -> bool:
    """Whether the C++ kernels are loaded (building them at the first call if needed)."""
    return load() is not None


def status() -> str:
    """One line: loaded from where, or why not."""
    mod = load()
    return f"loaded ({build_dir()})" if mod is not None else f"not available: {_error}"


def _reset() -> None:
    """Forget the load attempt (tests)."""
    global _module, _error, _tried
    with _lock:
        _module, _error, _tried = None, None, False


if __name__ == "__main__":  # python -m modelpress.kernels.ext: build now (make setup)
    print(f"modelpress C++ kernels: {status()}")
