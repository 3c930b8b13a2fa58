"""Kernels chosen per machine: time every candidate once, keep the fastest correct one.

The first time an op runs a format on an input of a new kind (format signature, weight
shape, row bucket, dtype, device, torch threads), ``choose`` runs every candidate kernel on
that very call's inputs, compares each output with the reference kernel's (relative
Frobenius error within the kernel's ``tolerance``; a kernel that fails or differs is
rejected and the reason recorded), times the survivors (best of a few short loops) and
keeps the fastest. The choice is cached in memory and in a JSON file in the user cache dir
(``MODELPRESS_KERNEL_CACHE`` overrides the directory), one file per machine and versions
(CPU model and flags, torch and modelpress versions), so the next process does not time
again.

Writers take an exclusive ``flock`` on a lock file, merge with what is on disk and replace
the file atomically: two processes tuning at once lose nothing and never leave a torn
file. A cache file that cannot be parsed is warned about once and rebuilt.

``MODELPRESS_AUTOTUNE=0`` turns timing off (the highest-priority candidate runs).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import os
import platform
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from ..formats.base import CompressedTensor
from ..machine import cpu_flags, cpu_model
from .dispatch import KERNELS, Kernel, _rows_bucket

log = logging.getLogger(__name__)

__all__ = ["cache_path", "choose", "clear_memory", "enabled", "lookup", "records"]

CACHE_VERSION = 1
_lock = threading.RLock()
_memory: dict[str, dict[str, Any]] = {}  # case key -> record (this process)
_disk: dict[str, dict[str, Any]] | None = None  # what the cache file held when first read
_warned: set[str] = set()


def enabled() -> bool:
    return os.environ.get("MODELPRESS_AUTOTUNE", "1").strip().lower() not in ("0", "false", "no", "off")


@functools.cache
def machine() -> dict[str, Any]:
    from .. import __version__

    return {
        "cpu": cpu_model(),
        "flags": cpu_flags(),
        "arch": platform.machine(),
        "torch": torch.__version__,
        "modelpress": __version__,
    }


def cache_path() -> Path:
    """The cache file for this machine and versions."""
    base = os.environ.get("MODELPRESS_KERNEL_CACHE")
    if base:
        root = Path(base)
    else:
        import platformdirs

        root = Path(platformdirs.user_cache_dir("modelpress")) / "kernels"
    digest = hashlib.sha256(json.dumps(machine(), sort_keys=True).encode()).hexdigest()[:16]
    return root / f"kernels-{digest}.json"


def clear_memory() -> None:
    """Forget the choices of this process (the file stays); the next call reads it again."""
    global _disk
    with _lock:
        _memory.clear()
        _disk = None


def case_key(op: str, fmt: CompressedTensor, x: torch.Tensor, ks: list[Kernel]) -> str:
    present = [f for f in fmt.optional_fields if _has(fmt, f)]
    return "|".join(
        [
            op,
            fmt.format_name,
            json.dumps(fmt.meta(), sort_keys=True, default=str),
            ",".join(present),
            "x".join(str(int(d)) for d in fmt.shape),
            f"rows<={_rows_bucket(op, x, fmt)}",
            str(x.dtype).removeprefix("torch."),
            x.device.type,
            f"threads={torch.get_num_threads()}",
            ",".join(sorted(f"{k.name}@{k.tolerance:g}" for k in ks)),  # a changed tolerance: timed again
        ]
    )


def _has(fmt: CompressedTensor, field: str) -> bool:
    try:
        return getattr(fmt, field, None) is not None
    except Exception:
        return False


# -- the cache file ----------------------------------------------------------------------


def _warn_once(msg: str, *args: Any) -> None:
    if msg not in _warned:
        _warned.add(msg)
        log.warning(msg, *args)


def _read(path: Path) -> dict[str, dict[str, Any]]:
    try:
        raw = path.read_text()
    except FileNotFoundError:
        return {}
    except OSError as e:
        _warn_once("cannot read the kernel cache %s (%s); timing kernels again", str(path), e)
        return {}
    try:
        data = json.loads(raw)
        if not (isinstance(data, dict) and data.get("version") == CACHE_VERSION):
            raise ValueError("not a modelpress kernel cache of this version")
        entries = data["entries"]
        if not isinstance(entries, dict) or not all(
            isinstance(v, dict) and isinstance(v.get("kernel"), str) for v in entries.values()
        ):
            raise ValueError("malformed entries")
        return entries
    except (ValueError, KeyError, TypeError) as e:
        _warn_once("the kernel cache %s is corrupt (%s); it is rebuilt", str(path), str(e)[:80])
        return {}


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    import fcntl

    with open(path.with_name(path.name + ".lock"), "a") as lf:
        fcntl.flock(lf, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lf, fcntl.LOCK_UN)


def _persist(key: str, record: dict[str, Any]) -> None:
    path = cache_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with _locked(path):
            entries = _read(path)  # what other processes wrote meanwhile
            entries[key] = record
            data = {"version": CACHE_VERSION, "machine": machine(), "entries": entries}
            tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
            tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
            os.replace(tmp, path)
    except OSError as e:
        _warn_once(
            "cannot write the kernel cache %s (%s); kernel choices are kept in memory only", str(path), e
        )


def _cached(key: str) -> dict[str, Any] | None:
    global _disk
    rec = _memory.get(key)
    if rec is None:
        if _disk is None:
            _disk = _read(cache_path())
        rec = _disk.get(key)
        if rec is not None:
            _memory[key] = rec
    return rec


def lookup(op: str, fmt: CompressedTensor, x: torch.Tensor, ks: list[Kernel]) -> str | None:
    """The kernel chosen earlier for this case (this process or the cache file), or None."""
    if not enabled():
        return None
    with _lock:
        rec = _cached(case_key(op, fmt, x, ks))
    if rec is None or rec["kernel"] not in {k.name for k in ks}:
        return None
    return str(rec["kernel"])


def records() -> dict[str, dict[str, Any]]:
    """Every choice this process made or read: case key -> record (kernel, times, rejects)."""
    with _lock:
        return dict(_memory)


# -- timing ------------------------------------------------------------------------------


def _rel_err(y: torch.Tensor, ref: torch.Tensor) -> float:
    y, ref = y.detach().double(), ref.detach().double()
    if y.shape != ref.shape:
        return float("inf")
    if not bool(torch.isfinite(y).all()):
        return float("inf")
    den = float(ref.norm())
    return float((y - ref).norm()) / den if den > 0 else float((y - ref).norm())


SLOWER = 4.0  # a candidate whose first call takes this many times the best one's so far ...
_SLOWER_S = 0.01  # ... and over 10 ms (never a small layer's first-call noise) is not timed


def _time(fn: Callable[[], Any], budget_s: float = 0.004, rounds: int = 3) -> float:
    """Best mean seconds per call over ``rounds`` loops of about ``budget_s`` each."""
    fn()
    t0 = time.perf_counter()
    fn()
    one = max(time.perf_counter() - t0, 1e-7)
    n = max(1, min(200, int(budget_s / one)))
    best = float("inf")
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        best = min(best, (time.perf_counter() - t0) / n)
    return best


def choose(
    op: str,
    fmt: CompressedTensor,
    x: torch.Tensor,
    kw: dict[str, Any],
    ks: list[Kernel],
    state: Callable[[Kernel, CompressedTensor], Any],
) -> str:
    """The kernel for this case: cached, or timed now on these inputs."""
    if not enabled():
        return ks[0].name
    key = case_key(op, fmt, x, ks)
    with _lock:
        rec = _cached(key)
        names = {k.name for k in ks}
        if rec is not None and rec["kernel"] in names:
            return str(rec["kernel"])
        rec = _measure(op, fmt, x, kw, ks, state)
        _memory[key] = rec
    _persist(key, rec)
    log.debug("kernel for %s: %s", key, rec)
    return str(rec["kernel"])


def _measure(
    op: str,
    fmt: CompressedTensor,
    x: torch.Tensor,
    kw: dict[str, Any],
    ks: list[Kernel],
    state: Callable[[Kernel, CompressedTensor], Any],
) -> dict[str, Any]:
    reference = next(k for k in KERNELS[op] if k.name == "reference")
    with torch.inference_mode():
        ref = reference.run(None, x, fmt, **kw)
        times: dict[str, float] = {}
        rejected: dict[str, str] = {}
        errors: dict[str, float] = {}
        # fallback kernels (a decoded copy ...) only where no other kernel passed
        first = [k for k in ks if not k.fallback]
        for k in first + [k for k in ks if k.fallback]:
            if k.fallback and any(n != reference.name for n in times):
                break
            if (
                k.known_slow is not None
                and k.known_slow(fmt, x)
                and any(o is not k and o is not reference and not o.fallback for o in ks)
            ):
                rejected[k.name] = "not timed: known to be slower on this CPU at these rows"
                continue
            try:
                st = state(k, fmt)

                def call(k: Kernel = k, st: Any = st) -> torch.Tensor:
                    return k.run(st, x, fmt, **kw)

                t0 = time.perf_counter()
                y = ref if k is reference else call()
                t_first = time.perf_counter() - t0
                if (
                    k is not reference
                    and times
                    and t_first > _SLOWER_S
                    and t_first > SLOWER * min(times.values())
                ):
                    # clearly slower at its first call (e.g. _int_mm without VNNI at 2,048 rows
                    # of a 49k-row LM head: ~30 s a call): not timed further
                    rejected[k.name] = (
                        f"slower: {t_first:.3g} s at its first call vs {min(times.values()):.3g} s"
                    )
                    _drop_state(k, fmt)
                    continue
                err = 0.0 if k is reference else _rel_err(y, ref)
                if err > k.tolerance:
                    rejected[k.name] = f"relative error {err:.2e} > {k.tolerance:.0e}"
                    _drop_state(k, fmt)
                    continue
                errors[k.name] = err
                times[k.name] = _time(call)
            except Exception as e:  # a kernel that cannot run here is not a candidate
                rejected[k.name] = f"{type(e).__name__}: {str(e)[:120]}"
                _drop_state(k, fmt)
        best = min(times, key=lambda n: times[n]) if times else reference.name
        for k in ks:  # prepared copies of the losers would only cost memory
            if k.name != best:
                _drop_state(k, fmt)
    return {
        "kernel": best,
        "seconds": {n: round(t, 9) for n, t in times.items()},
        "rel_error": {n: float(f"{e:.3g}") for n, e in errors.items()},
        "rejected": rejected,
    }


def _drop_state(k: Kernel, fmt: CompressedTensor) -> None:
    states = fmt.__dict__.get("_kernel_state")
    if states is not None:
        states.pop((k.op, k.name), None)
