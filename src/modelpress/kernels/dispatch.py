"""The kernel seam: one dispatch point per op, several implementations per (format, op).

Compressed modules never compute with their formats directly: they call ``kernels.linear``,
``kernels.embedding`` ... (``kernels/__init__.py``), which run the first registered kernel
that supports the format and input, in priority order. Every op has a reference kernel that
decodes the weight and calls the float op, so something always runs; a faster kernel is
checked against it (``op(x, fmt.decode())``, DESIGN.md).

A kernel may keep its own copy of the weights in a layout of its own (a packed int4 tile
layout, a row-sum for zero-point correction ...): ``prepare(fmt)`` builds it at the first
call, it is kept on the format object (never in the state dict, never saved) and dropped by
``invalidate(fmt)``, which ``CompressedTensor`` calls when its tensors move (``.to()``) or
are replaced (``from_storage``). Code that edits a format's tensors in place calls
``invalidate`` too.

Where several kernels can run a format and input, the dispatcher picks per machine: at the
first call for a (format signature, weight shape, row bucket, dtype, device, threads) it
times every candidate on that very call's inputs, drops any whose output differs from the
reference kernel's by more than the kernel's ``tolerance`` (relative Frobenius error), and
keeps the fastest (``autotune.py``; the choice is cached in the user cache dir, keyed by the
machine and versions). ``MODELPRESS_AUTOTUNE=0`` skips the timing: the highest-priority
candidate runs.

``MODELPRESS_KERNELS="op=name,..."`` (or ``force(op, name)``) pins the kernel of an op; a
pinned kernel that cannot run a given format and input is a ``ConfigError``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
from collections.abc import Callable, Iterator
from typing import Any

import torch

from ..errors import ConfigError
from ..formats.base import CompressedTensor

__all__ = [
    "KERNELS",
    "ROW_BUCKETS",
    "Kernel",
    "candidates",
    "chosen",
    "force",
    "invalidate",
    "register_kernel",
    "run",
]


def _always(fmt: CompressedTensor, x: torch.Tensor) -> bool:
    return True


@dataclasses.dataclass(frozen=True)
class Kernel:
    """One implementation of ``op`` for the formats named in ``formats`` (``"*"``: any).

    ``run(state, x, fmt, **kw)`` computes the op; ``state`` is what ``prepare(fmt)``
    returned (``None`` without ``prepare``). ``supports(fmt, x)`` says whether this kernel
    can run that format on that input (dtype, device, shape limits). ``tolerance``: the
    relative error against the reference kernel's output that the autotuner accepts (the
    kernel's own rounding: activation quantization, bf16 activations ...). ``fallback``:
    timed only where no other kernel but the reference passed (``dense``: a decoded copy
    that costs memory, worth it only where nothing faster runs)."""

    name: str
    op: str
    formats: tuple[str, ...]
    run: Callable[..., torch.Tensor]
    prepare: Callable[[CompressedTensor], Any] | None = None
    supports: Callable[[CompressedTensor, torch.Tensor], bool] = _always
    priority: int = 0  # higher first; the reference kernel has the lowest
    # known_slow(fmt, x): this kernel is known to lose here (e.g. _int_mm without VNNI at many
    # rows); the autotuner does not time it, forcing it still runs it
    known_slow: Callable[[CompressedTensor, torch.Tensor], bool] | None = None
    tolerance: float = 1e-4
    fallback: bool = False

    def accepts(self, fmt: CompressedTensor, x: torch.Tensor) -> bool:
        return ("*" in self.formats or fmt.format_name in self.formats) and self.supports(fmt, x)


KERNELS: dict[str, list[Kernel]] = {}  # op -> kernels, highest priority first
_forced: dict[str, str] = {}


def register_kernel(kernel: Kernel) -> Kernel:
    """Make ``kernel`` a candidate for its op."""
    ks = KERNELS.setdefault(kernel.op, [])
    if any(k.name == kernel.name for k in ks):
        raise ValueError(f"kernel '{kernel.name}' for op '{kernel.op}' is registered twice")
    ks.append(kernel)
    ks.sort(key=lambda k: -k.priority)
    return kernel


@functools.lru_cache(maxsize=8)
def _env_pins(spec: str) -> dict[str, str]:
    """``MODELPRESS_KERNELS`` parsed (cached by its value: this runs at every call)."""
    pins: dict[str, str] = {}
    for part in filter(None, spec.split(",")):
        op, sep, name = part.strip().partition("=")
        if not sep:
            raise ConfigError(f"MODELPRESS_KERNELS: expected op=kernel entries, got '{part}'")
        pins.setdefault(op.strip(), name.strip())
    return pins


def _pins() -> dict[str, str]:
    env = _env_pins(os.environ.get("MODELPRESS_KERNELS", ""))
    if not _forced:
        return env
    return {**env, **_forced}


def force(op: str, name: str | None) -> None:
    """Pin ``op`` to the kernel ``name`` (``None``: unpin)."""
    if name is None:
        _forced.pop(op, None)
        return
    if op not in KERNELS or all(k.name != name for k in KERNELS[op]):
        known = ", ".join(k.name for k in KERNELS.get(op, [])) or "none"
        raise ConfigError(f"no kernel '{name}' for op '{op}' (known: {known})")
    _forced[op] = name


@contextlib.contextmanager
def reference_kernels() -> Iterator[None]:
    """Run every op on its reference kernel (decoded weights, float math) inside the block:
    the semantics of the stored format, what an exported model is compared with."""
    saved = dict(_forced)
    try:
        for op, ks in KERNELS.items():
            if any(k.name == "reference" for k in ks):
                _forced[op] = "reference"
        yield
    finally:
        _forced.clear()
        _forced.update(saved)


def candidates(op: str, fmt: CompressedTensor, x: torch.Tensor) -> list[Kernel]:
    """The kernels that can run this op, format and input, highest priority first (the
    pinned one alone, when one is pinned)."""
    ks = KERNELS.get(op)
    if not ks:
        raise ConfigError(f"no kernel is registered for op '{op}'")
    pin = _pins().get(op)
    if pin is not None:
        for k in ks:
            if k.name == pin:
                if not k.accepts(fmt, x):
                    raise ConfigError(
                        f"kernel '{pin}' (pinned for {op}) cannot run a {fmt.format_name} weight "
                        f"{tuple(fmt.shape)} on a {x.dtype} input of shape {tuple(x.shape)} on {x.device}"
                    )
                return [k]
        raise ConfigError(f"no kernel '{pin}' for op '{op}' (known: {', '.join(k.name for k in ks)})")
    out = [k for k in ks if k.accepts(fmt, x)]
    if not out:  # the reference accepts all
        raise ConfigError(f"no kernel for op '{op}' runs a {fmt.format_name} weight")
    return out


def _by_name(op: str, name: str) -> Kernel:
    return next(k for k in KERNELS[op] if k.name == name)


def chosen(op: str, fmt: CompressedTensor, x: torch.Tensor) -> Kernel:
    """The kernel that ``run`` uses for this op, format and input: the pinned one, the
    one the autotuner chose (for this machine, from its cache), or the highest-priority
    candidate where it has not timed this case yet."""
    ks = candidates(op, fmt, x)
    if len(ks) > 1:
        from . import autotune

        name = autotune.lookup(op, fmt, x, ks)
        if name is not None:
            return _by_name(op, name)
    return ks[0]


def _state(kernel: Kernel, fmt: CompressedTensor) -> Any:
    if kernel.prepare is None:
        return None
    states: dict[Any, Any] = fmt.__dict__.setdefault("_kernel_state", {})
    key = (kernel.op, kernel.name)
    if key not in states:
        states[key] = kernel.prepare(fmt)
    return states[key]


def _select(op: str, x: torch.Tensor, fmt: CompressedTensor, kw: dict[str, Any]) -> Kernel:
    ks = candidates(op, fmt, x)
    if len(ks) == 1 or all(k.name != "reference" for k in KERNELS[op]):
        return ks[0]  # nothing to choose, or no oracle to check a choice against
    from . import autotune

    return _by_name(op, autotune.choose(op, fmt, x, kw, ks, _state))


def _needs_grad(x: torch.Tensor, fmt: CompressedTensor) -> bool:
    if not torch.is_grad_enabled():
        return False
    if x.requires_grad:
        return True
    return any(t.requires_grad for t in fmt._buffers.values() if t is not None) or any(
        p.requires_grad for p in fmt._parameters.values() if p is not None
    )


def run(op: str, x: torch.Tensor, fmt: CompressedTensor, **kw: Any) -> torch.Tensor:
    """Compute ``op`` on input ``x`` with the weight ``fmt`` through the chosen kernel.

    Where autograd needs gradients through the input or the format's tensors (fine-tuning
    centroids, distilling through a compressed layer), the reference kernel runs: it is
    the only differentiable one. A bias that requires grad is added outside the kernel."""
    if _needs_grad(x, fmt):
        return _by_name(op, "reference").run(None, x, fmt, **kw)
    bias = kw.get("bias")
    # (outputs whose last dim is the bias's: the linear ops; conv has only the reference)
    late_bias = op != "conv" and bias is not None and bias.requires_grad and torch.is_grad_enabled()
    if late_bias:
        kw = {**kw, "bias": None}
    # the choice is remembered on the format (dropped with its prepared copies by
    # ``invalidate``) per row bucket, dtype and device, and for the pins in force
    states: dict[Any, Any] = fmt.__dict__.setdefault("_kernel_state", {})
    key = ("_chosen", op, _rows_bucket(op, x, fmt), x.dtype, x.device, _pins_key())
    k = states.get(key)
    if k is None:  # (the key fixes what ``supports`` looks at: rows, dtype, device)
        k = states[key] = _select(op, x, fmt, kw)
    y = k.run(_state(k, fmt), x, fmt, **kw)
    if late_bias:
        assert bias is not None
        y = y + bias.to(y.dtype)
    return y


ROW_BUCKETS = (1, 4, 16, 64, 256, 1024)


def _rows_bucket(op: str, x: torch.Tensor, fmt: CompressedTensor) -> int:
    """The input's rows (tokens x batch), rounded up to a bucket: kernels are chosen per
    bucket (a weight-only kernel may win for one row and lose for 64)."""
    if op == "embedding":
        rows = x.numel()
    elif op == "conv":
        rows = int(x.shape[0]) if x.dim() else 1
    else:
        rows = x.numel() // max(1, int(fmt.shape[-1])) if fmt.shape else x.numel()
    if rows == 0:
        return 0
    for b in ROW_BUCKETS:
        if rows <= b:
            return b
    return ROW_BUCKETS[-1] * 4


def _pins_key() -> tuple[tuple[str, str], ...]:
    pins = _pins()
    return tuple(sorted(pins.items())) if pins else ()


def _chosen_kernels(model: torch.nn.Module) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    seen: set[int] = set()
    for m in model.modules():
        if not isinstance(m, CompressedTensor) or id(m) in seen:
            continue
        seen.add(id(m))
        for key, k in m.__dict__.get("_kernel_state", {}).items():
            if isinstance(key, tuple) and key and key[0] == "_chosen":
                per_op = out.setdefault(k.op, {})
                per_op[k.name] = per_op.get(k.name, 0) + 1
    return out


def invalidate(fmt: CompressedTensor) -> None:
    """Drop every kernel's prepared copy of ``fmt`` (rebuilt at the next call)."""
    fmt.invalidate()
