"""Compressed weight formats.

A format is a small ``nn.Module`` whose *declared fields* are buffers, so a compressed layer
that holds one as ``self.weight`` gets flat state-dict keys such as ``layer.weight.qdata``
and ``layer.weight.scale`` (the canonical on-disk layout), ``.to()`` and a useful repr for
free. Non-tensor parameters (bits, group size ...) are the format's ``meta``, stored in the
manifest next to the format name and version.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from torch import nn

from ..errors import ArtifactError
from ..registry import Registry

__all__ = ["FORMATS", "CompressedTensor", "check", "check_field", "check_zstd_size", "register_format"]


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

    def _apply(self, fn, recurse=True):  # .to(), .half() ...
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
        """An instance with empty (meta-device) fields of the given (stored) shapes and
        dtypes, its metadata checked against them (``validate``) before any byte is read."""
        if not isinstance(entry, dict):
            raise ArtifactError(f"format '{cls.format_name}': the manifest entry is not an object")
        version = entry.get("version")
        if type(version) is not int or version != cls.format_version:
            raise ArtifactError(
                f"format '{cls.format_name}' version {version!r} is not supported "
                f"(this modelpress reads version {cls.format_version}); upgrade modelpress"
            )
        shape, meta = entry.get("shape"), entry.get("meta", {})
        if not _is_shape(shape):
            raise ArtifactError(f"format '{cls.format_name}' has a malformed shape {shape!r}")
        if not isinstance(meta, dict) or not all(_is_scalar(v) for v in meta.values()):
            raise ArtifactError(f"format '{cls.format_name}' has malformed metadata {meta!r}")
        bad = [k for k, kinds in cls.meta_types.items() if k in meta and not _of_kinds(meta[k], kinds)]
        if bad:
            raise ArtifactError(
                f"format '{cls.format_name}' has metadata of the wrong type: "
                + ", ".join(f"{k}={meta[k]!r}" for k in bad)
            )
        unknown = sorted(set(specs) - set(cls.fields) - set(cls.optional_fields))
        if unknown:
            raise ArtifactError(f"format '{cls.format_name}' has unknown field(s) {', '.join(unknown)}")
        tensors = {
            name: torch.empty(tuple(shape), dtype=dtype, device="meta")
            for name, (shape, dtype) in specs.items()
        }
        missing = [f for f in cls.fields if f not in tensors]
        if missing:
            raise ArtifactError(f"format '{cls.format_name}' is missing field(s) {', '.join(missing)}")
        assert isinstance(shape, list)  # checked by _is_shape
        dims: list[int] = shape
        try:
            fmt = cls(dims, **tensors, **meta)
            fmt.validate()
        except (TypeError, ValueError, ArithmeticError, RuntimeError, MemoryError) as e:
            raise ArtifactError(
                f"format '{cls.format_name}' {tuple(dims)}: {e or type(e).__name__}"
            ) from None
        return fmt

    # -- checks of what is read (load only) ---------------------------------------------
    #: JSON types each metadata value must have (``"int"``: an integer, not a bool)
    meta_types: ClassVar[dict[str, tuple[str, ...]]] = {}

    def validate(self) -> None:
        """Check the metadata against the fields' *stored* shapes and dtypes (called by
        ``from_manifest`` on the empty instance ``load`` builds, before any byte is read):
        bits in range, group sizes dividing the rows, scale shapes, packed lengths equal to
        ``ceil(count * bits / 8)``, codebook sizes ``2**bits`` ... Raises ``ValueError``
        with what does not fit."""

    def validate_loaded(self) -> None:
        """Checks that need the loaded values (a mask's popcount against the code count,
        sparse positions inside the weight), run by ``load`` after ``from_storage``."""

    def validate_stored(self, stored: dict[str, torch.Tensor]) -> None:
        """Checks of the stored bytes before ``from_storage`` decodes them (a zstd frame
        must announce the size the metadata expects: no decompression bomb)."""

    def load_nbytes(self) -> int:
        """Bytes of the in-memory fields ``from_storage`` builds (what loading allocates),
        computable on the empty instance of ``from_manifest`` (default: the stored fields)."""
        return sum(b.numel() * b.element_size() for b in self.buffers())

    def _field(self, name: str) -> torch.Tensor | None:
        return self._buffers.get(name)

    def extra_repr(self) -> str:
        parts = [f"shape={tuple(self.shape)}"]
        for name, b in self.named_buffers(recurse=False):
            parts.append(f"{name}={tuple(b.shape)}:{str(b.dtype).removeprefix('torch.')}")
        meta = ", ".join(f"{k}={v}" for k, v in self.meta().items())
        return ", ".join(parts) + (", " + meta if meta else "")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_shape(v: Any) -> bool:
    return (
        isinstance(v, list)
        and 0 < len(v) <= 8
        and all(_is_int(s) and 0 <= s <= MAX_DIM for s in v)
        and math.prod(v) <= MAX_NUMEL
    )


def _is_scalar(v: Any) -> bool:
    return v is None or isinstance(v, (bool, int, str)) or (isinstance(v, float) and math.isfinite(v))


def _of_kinds(v: Any, kinds: tuple[str, ...]) -> bool:
    return any(
        (k == "int" and _is_int(v)) or (k == "str" and isinstance(v, str)) or (k == "none" and v is None)
        for k in kinds
    )


def check(cond: bool, message: str) -> None:
    """``validate`` helper: a ``ValueError`` with ``message`` unless ``cond``."""
    if not cond:
        raise ValueError(message)


def check_field(
    t: torch.Tensor | None, name: str, shape: Sequence[int] | None, kind: str, *, required: bool = True
) -> None:
    """``validate`` helper: field ``name`` is present (or absent when not ``required`` and
    ``shape`` is None), of ``shape`` and of dtype ``kind`` (``float``, ``int``, ``int8``,
    ``uint8``, ``int8/uint8``)."""
    if t is None:
        check(not required, f"field '{name}' is missing")
        return
    check(shape is not None, f"field '{name}' must not be present with this metadata")
    assert shape is not None
    check(
        tuple(t.shape) == tuple(shape),
        f"field '{name}' has shape {list(t.shape)}, the metadata implies {list(shape)}",
    )
    ok = {
        "float": t.dtype.is_floating_point,
        "int": not t.dtype.is_floating_point and not t.dtype.is_complex and t.dtype != torch.bool,
        "uint8": t.dtype == torch.uint8,
        "int8": t.dtype == torch.int8,
        "int8/uint8": t.dtype in (torch.int8, torch.uint8),
    }[kind]
    check(ok, f"field '{name}' has dtype {str(t.dtype).removeprefix('torch.')}, expected {kind}")


def check_zstd_size(blob: torch.Tensor, size: int, name: str) -> None:
    """``validate_stored`` helper: a zstd frame announces exactly ``size`` decoded bytes
    (a frame that claims more would be a decompression bomb; one without a size is refused)."""
    import zstandard

    check(blob.dtype == torch.uint8 and blob.dim() == 1, f"field '{name}' must be a 1-D uint8 zstd stream")
    try:
        announced = zstandard.frame_content_size(blob.detach().cpu().contiguous().numpy().tobytes()[:18])
    except zstandard.ZstdError as e:
        raise ValueError(f"field '{name}' is not a zstd stream: {e}") from None
    check(announced == size, f"field '{name}' announces {announced} decoded bytes, expected {size}")


#: bounds of a logical shape in a manifest (beyond them nothing can be real)
MAX_DIM = 1 << 40
MAX_NUMEL = 1 << 44

FORMATS: Registry[type[CompressedTensor]] = Registry("tensor format")


def register_format(cls: type[CompressedTensor]) -> type[CompressedTensor]:
    if not cls.format_name:
        raise TypeError(f"{cls.__name__} must set format_name")
    FORMATS.add(cls.format_name, cls)
    return cls
