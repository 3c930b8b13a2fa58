"""Compressed weight formats.

A format is a small ``nn.Module`` whose *declared fields* are buffers, so a compressed layer
that holds one as ``self.weight`` gets flat state-dict keys such as ``layer.weight.qdata``
and ``layer.weight.scale`` (the canonical on-disk layout), ``.to()`` and a useful repr for
free. Non-tensor parameters (bits, group size ...) are the format's ``meta``, stored in the
manifest next to the format name and version.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from torch import nn

from ..errors import ArtifactError
from ..registry import Registry

__all__ = ["FORMATS", "CompressedTensor", "register_format"]


class CompressedTensor(nn.Module):
    """Base of all formats: declared tensor fields + a reference ``decode``.

    Subclasses set ``format_name``, ``format_version``, ``fields`` (always present) and
    ``optional_fields`` (may be ``None``), and implement ``decode`` and ``meta``. Their
    ``__init__`` takes ``(shape, *, <fields>, **meta)`` so that ``from_manifest`` can rebuild
    an empty instance before the tensors are loaded.
    """

    format_name: ClassVar[str] = ""
    format_version: ClassVar[int] = 1
    fields: ClassVar[tuple[str, ...]] = ()
    optional_fields: ClassVar[tuple[str, ...]] = ()

    def __init__(self, shape: Sequence[int], **tensors: torch.Tensor | None) -> None:
        super().__init__()
        self.shape = torch.Size(shape)
        for f in self.fields:
            t = tensors.get(f)
            if t is None:
                raise ValueError(f"format {self.format_name}: field '{f}' is required")
            self.register_buffer(f, t)
        for f in self.optional_fields:
            t = tensors.get(f)
            if t is not None:
                self.register_buffer(f, t)
            else:
                setattr(self, f, None)

    # -- to implement ----------------------------------------------------------------------
    def decode(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The dense weight this format stands for (reference implementation)."""
        raise NotImplementedError

    def meta(self) -> dict[str, Any]:
        """JSON-able non-tensor parameters needed to rebuild the format."""
        return {}

    def decode_rows(self, rows: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Only the given rows of the 2-D view ``(shape[0], rest)``, ``(len(rows), rest)``
        (an embedding lookup). Formats override it to skip decoding the other rows."""
        return self.decode(dtype).reshape(int(self.shape[0]), -1)[rows]

    # -- shared ----------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return next(iter(self.buffers())).device

    @property
    def dtype(self) -> torch.dtype:
        """The dtype ``decode`` produces by default (duck-typing ``nn.Parameter.dtype``)."""
        return torch.float32

    def numel(self) -> int:
        return int(self.shape.numel())

    def nbytes(self) -> int:
        """Bytes of the fields in memory (their in-memory layout)."""
        return sum(b.numel() * b.element_size() for b in self.buffers())

    # -- storage <-> memory ------------------------------------------------------------
    # ``save`` writes ``to_storage()`` and ``load`` hands the tensors it read to
    # ``from_storage``; nothing else converts. ``state_dict()`` is the in-memory layout.
    # A format whose stored layout differs from its in-memory one (bit streams, entropy-coded
    # codes) overrides both; formats are treated as immutable once built (code that edits a
    # format's tensors in place calls ``invalidate``).

    def to_storage(self) -> dict[str, torch.Tensor]:
        """The tensors as written to disk, by field name (default: the fields as they are)."""
        return {name: b for name, b in self.named_buffers(recurse=False)}

    def from_storage(self, stored: dict[str, torch.Tensor]) -> None:
        """Install the tensors read from disk (``to_storage``'s layout) as this format's
        fields. Raises ``ValueError`` when they do not fit the format's metadata."""
        for name, t in stored.items():
            self._buffers[name] = t
        self.invalidate()

    def stored_nbytes(self) -> int:
        """Bytes this format writes to disk (what its size on disk counts)."""
        return sum(t.numel() * t.element_size() for t in self.to_storage().values())

    def invalidate(self) -> None:
        """Drop what was derived from the tensors: kernels' prepared copies (``kernels``),
        a cached stored layout, a format's own derived tensors (``_derived``)."""
        for attr in ("_kernel_state", "_stored", "_derived"):
            self.__dict__.pop(attr, None)

    def _apply(self, fn, recurse=True):  # type: ignore[no-untyped-def]  # .to(), .half() ...
        self.invalidate()
        return super()._apply(fn, recurse)

    def to_manifest(self) -> dict[str, Any]:
        return {
            "format": self.format_name,
            "version": self.format_version,
            "shape": list(self.shape),
            "meta": self.meta(),
        }

    @classmethod
    def from_manifest(
        cls, entry: dict[str, Any], specs: dict[str, tuple[Sequence[int], torch.dtype]]
    ) -> CompressedTensor:
        """An instance with empty (meta-device) fields of the given shapes and dtypes."""
        if int(entry.get("version", -1)) != cls.format_version:
            raise ArtifactError(
                f"format '{cls.format_name}' version {entry.get('version')} is not supported "
                f"(this modelpress reads version {cls.format_version}); upgrade modelpress"
            )
        tensors = {
            name: torch.empty(tuple(shape), dtype=dtype, device="meta")
            for name, (shape, dtype) in specs.items()
        }
        missing = [f for f in cls.fields if f not in tensors]
        if missing:
            raise ArtifactError(f"format '{cls.format_name}' is missing field(s) {', '.join(missing)}")
        return cls(entry["shape"], **tensors, **entry.get("meta", {}))

    def extra_repr(self) -> str:
        parts = [f"shape={tuple(self.shape)}"]
        for name, b in self.named_buffers(recurse=False):
            parts.append(f"{name}={tuple(b.shape)}:{str(b.dtype).removeprefix('torch.')}")
        meta = ", ".join(f"{k}={v}" for k, v in self.meta().items())
        return ", ".join(parts) + (", " + meta if meta else "")


FORMATS: Registry[type[CompressedTensor]] = Registry("tensor format")


def register_format(cls: type[CompressedTensor]) -> type[CompressedTensor]:
    if not cls.format_name:
        raise TypeError(f"{cls.__name__} must set format_name")
    FORMATS.add(cls.format_name, cls)
    return cls
