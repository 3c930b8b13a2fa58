"""Modules that run compressed weights, and their registry.

A compressed module records how to rebuild itself (``to_manifest``: class name, version and
constructor args, its formats' manifests) and rebuilds an *empty* copy from that record
(``from_manifest``), whose tensors are then assigned from the safetensors file.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from torch import nn

from ..errors import ArtifactError
from ..formats.base import FORMATS, CompressedTensor
from ..registry import Registry

__all__ = ["MODULES", "CompressedModule", "TensorSpecs", "register_module"]

# relative state-dict key -> (shape, dtype), as read from the manifest
TensorSpecs = dict[str, tuple[Sequence[int], torch.dtype]]


class CompressedModule(nn.Module):
    """Base: subclasses list their format-holding attributes in ``format_attrs``."""

    module_name: ClassVar[str] = ""
    module_version: ClassVar[int] = 1
    format_attrs: ClassVar[tuple[str, ...]] = ("weight",)

    def args(self) -> dict[str, Any]:
        """JSON-able constructor arguments (besides formats and plain tensors)."""
        raise NotImplementedError

    def to_manifest(self) -> dict[str, Any]:
        return {
            "class": self.module_name,
            "version": self.module_version,
            "args": self.args(),
            "formats": {a: getattr(self, a).to_manifest() for a in self.format_attrs},
        }

    @classmethod
    def build_empty(cls, args: dict[str, Any], formats: dict[str, CompressedTensor]) -> CompressedModule:
        raise NotImplementedError

    @classmethod
    def from_manifest(cls, entry: dict[str, Any], specs: TensorSpecs) -> CompressedModule:
        if int(entry.get("version", -1)) != cls.module_version:
            raise ArtifactError(
                f"module '{cls.module_name}' version {entry.get('version')} is not supported "
                f"(this modelpress reads version {cls.module_version})"
            )
        formats: dict[str, CompressedTensor] = {}
        for attr, fentry in entry.get("formats", {}).items():
            fcls = FORMATS.get(str(fentry.get("format")))
            prefix = attr + "."
            fspecs = {k[len(prefix) :]: v for k, v in specs.items() if k.startswith(prefix)}
            formats[attr] = fcls.from_manifest(fentry, fspecs)
        with torch.device("meta"):
            return cls.build_empty(entry.get("args", {}), formats)


MODULES: Registry[type[CompressedModule]] = Registry("compressed module")


def register_module(cls: type[CompressedModule]) -> type[CompressedModule]:
    if not cls.module_name:
        raise TypeError(f"{cls.__name__} must set module_name")
    MODULES.add(cls.module_name, cls)
    return cls
