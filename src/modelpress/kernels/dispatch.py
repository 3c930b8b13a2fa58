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

``MODELPRESS_KERNELS="op=name,..."`` (or ``force(op, name)``) pins the kernel of an op; a
pinned kernel that cannot run a given format and input is a ``ConfigError``.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Callable
from typing import Any

import torch

from ..errors import ConfigError
from ..formats.base import CompressedTensor

__all__ = ["KERNELS", "Kernel", "chosen", "force", "invalidate", "register_kernel", "run"]


def _always(fmt: CompressedTensor, x: torch.Tensor) -> bool:
    return True


@dataclasses.dataclass(frozen=True)
class Kernel:
    """One implementation of ``op`` for the formats named in ``formats`` (``"*"``: any).

    ``run(state, x, fmt, **kw)`` computes the op; ``state`` is what ``prepare(fmt)``
    returned (``None`` without ``prepare``). ``supports(fmt, x)`` says whether this kernel
    can run that format on that input (dtype, device, shape limits)."""

    name: str
    op: str
    formats: tuple[str, ...]
    run: Callable[..., torch.Tensor]
    prepare: Callable[[CompressedTensor], Any] | None = None
    supports: Callable[[CompressedTensor, torch.Tensor], bool] = _always
    priority: int = 0  # higher first; the reference kernel has the lowest

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


def chosen(op: str, fmt: CompressedTensor, x: torch.Tensor) -> Kernel:
    """The kernel that ``run`` uses for this op, format and input."""
    candidates = KERNELS.get(op)
    if not candidates:
        raise ConfigError(f"no kernel is registered for op '{op}'")
    pin = _pins().get(op)
    if pin is not None:
        for k in candidates:
            if k.name == pin:
                if not k.accepts(fmt, x):
                    raise ConfigError(
                        f"kernel '{pin}' (pinned for {op}) cannot run a {fmt.format_name} weight "
                        f"{tuple(fmt.shape)} on a {x.dtype} input of shape {tuple(x.shape)} on {x.device}"
                    )
                return k
        raise ConfigError(f"no kernel '{pin}' for op '{op}' (known: {', '.join(k.name for k in candidates)})")
    for k in candidates:
        if k.accepts(fmt, x):
            return k
    raise ConfigError(f"no kernel for op '{op}' runs a {fmt.format_name} weight")  # the reference accepts all


def _state(kernel: Kernel, fmt: CompressedTensor) -> Any:
    if kernel.prepare is None:
        return None
    states: dict[tuple[str, str], Any] = fmt.__dict__.setdefault("_kernel_state", {})
    key = (kernel.op, kernel.name)
    if key not in states:
        states[key] = kernel.prepare(fmt)
    return states[key]


def run(op: str, x: torch.Tensor, fmt: CompressedTensor, **kw: Any) -> torch.Tensor:
    """Compute ``op`` on input ``x`` with the weight ``fmt`` through the chosen kernel."""
    k = chosen(op, fmt, x)
    return k.run(_state(k, fmt), x, fmt, **kw)


def invalidate(fmt: CompressedTensor) -> None:
    """Drop every kernel's prepared copy of ``fmt`` (rebuilt at the next call)."""
    fmt.invalidate()
