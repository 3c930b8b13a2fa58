"""torchvision's model definitions, also where its compiled operators cannot load.

torchvision's architectures (``torchvision.models``) are plain Python modules; only its
detection operators (``nms``, ``roi_align`` ...) live in a compiled extension that must be
built for the very torch it runs beside. The torchvision wheel on PyPI is built against a
CUDA torch, so next to a CPU-only torch ``import torchvision`` fails with "operator
torchvision::nms does not exist". modelpress needs none of those operators, so when the
normal import fails that way the package is opened without running its ``__init__`` (which
registers the operators) and ``torchvision.models`` is imported from it. Nothing is
downloaded: weights are never fetched from here (``weights=None`` always).
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
import types
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError
from .architectures import register_architecture

__all__ = [
    "TORCHVISION_NOTE",
    "install_import_fallback",
    "notes",
    "torchvision_architecture",
    "torchvision_models",
]

TORCHVISION_NOTE = (
    "torchvision's compiled operators did not load next to this torch; its model definitions "
    "were imported without them (modelpress uses none of the operators)"
)

_notes: list[str] = []


def _without_extension() -> types.ModuleType:
    for name in [n for n in sys.modules if n == "torchvision" or n.startswith("torchvision.")]:
        del sys.modules[name]
    spec = importlib.util.find_spec("torchvision")
    if spec is None or spec.submodule_search_locations is None:
        raise ConfigError("torchvision is not installed (pip install 'modelpress[vision]')")
    pkg = types.ModuleType("torchvision")
    pkg.__path__ = list(spec.submodule_search_locations)
    pkg.__spec__ = spec
    pkg.__file__ = spec.origin
    sys.modules["torchvision"] = pkg
    try:
        models = importlib.import_module("torchvision.models")
    except Exception:
        del sys.modules["torchvision"]
        raise
    pkg.models = models  # type: ignore[attr-defined]
    return models


def torchvision_models() -> types.ModuleType:
    """``torchvision.models``; a ``ConfigError`` when torchvision is not installed."""
    if "torchvision.models" in sys.modules:
        return sys.modules["torchvision.models"]
    try:
        import torchvision.models as tm

        return tm
    except ModuleNotFoundError as e:
        if e.name is not None and e.name.split(".")[0] != "torchvision":
            raise
        raise ConfigError("torchvision is not installed (pip install 'modelpress[vision]')") from None
    except (RuntimeError, OSError, ImportError, AttributeError):
        try:
            models = _without_extension()
        except ConfigError:
            raise
        except Exception as e:
            raise ConfigError(f"torchvision is installed but its models cannot be imported: {e}") from None
        if TORCHVISION_NOTE not in _notes:
            _notes.append(TORCHVISION_NOTE)
        return models


def torchvision_architecture(name: str, **kwargs: Any) -> Any:
    """A torchvision architecture by its builder name (``resnet18``, ``mobilenet_v2`` ...) with
    random weights (``weights=None``; nothing is downloaded). ``ConfigError`` for an unknown
    name, listing the known ones."""
    tm = torchvision_models()
    try:
        names = sorted(tm.list_models(module=tm))
    except Exception:
        names = sorted(n for n in dir(tm) if not n.startswith("_") and callable(getattr(tm, n)))
    if name not in names:
        close = [n for n in names if name.lower().replace("-", "_") in n][:8]
        hint = f"; did you mean {', '.join(close)}?" if close else f" ({len(names)} known, e.g. resnet18)"
        raise ConfigError(f"'{name}' is not a torchvision architecture{hint}")
    return tm.get_model(name, weights=None, **kwargs)


def notes() -> list[str]:
    """What the import had to work around (empty when torchvision imported normally)."""
    return list(_notes)


class _Fallback(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """The first ``import torchvision`` of the process (by anyone: transformers imports it
    for its image utilities as soon as it is installed) tries the real package and, where its
    compiled operators cannot load, gives the package without them (``_without_extension``)
    instead of failing. One shot: it takes itself off ``sys.meta_path`` at once."""

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        if fullname != "torchvision":
            return None  # (``importlib.util.find_spec`` asks too: stay until an import loads it)
        return importlib.machinery.ModuleSpec("torchvision", self, is_package=True)

    def create_module(self, spec: Any) -> types.ModuleType:
        if self in sys.meta_path:
            sys.meta_path.remove(self)
        try:
            module = importlib.import_module("torchvision")
        except (RuntimeError, OSError, ImportError, AttributeError):
            _without_extension()
            if TORCHVISION_NOTE not in _notes:
                _notes.append(TORCHVISION_NOTE)
            module = sys.modules["torchvision"]
        self._real_spec = module.__spec__
        return module

    def exec_module(self, module: types.ModuleType) -> None:
        module.__spec__ = self._real_spec  # as the real import set it


def install_import_fallback() -> None:
    """Put the one-shot ``import torchvision`` fallback in place (nothing when torchvision is
    not installed or already imported). ``modelpress/__init__`` calls it."""
    if "torchvision" in sys.modules or any(isinstance(f, _Fallback) for f in sys.meta_path):
        return
    try:
        if importlib.util.find_spec("torchvision") is None:
            return
    except (ImportError, ValueError):
        return
    sys.meta_path.insert(0, _Fallback())


@register_architecture("torchvision")
class TorchvisionClassifier(nn.Module):
    """A torchvision classification architecture by builder name, registered so that its
    artifacts load without pickle (the manifest stores ``name`` and ``num_classes``; the name
    must be one of torchvision's builders). The network is ``self.net``, so a torchvision
    state dict loads into ``self.net`` as it is; ``class_names`` travel in the manifest.
    ``forward(x)`` returns the logits (the main output where a network also returns auxiliary
    ones in training mode)."""

    def __init__(self, name: str, num_classes: int = 1000, class_names: list[str] | None = None) -> None:
        super().__init__()
        from .lenet import check_class_names

        if not isinstance(name, str) or isinstance(num_classes, bool) or not isinstance(num_classes, int):
            raise ConfigError(f"a torchvision model needs a name and an integer class count, got {name!r}")
        if num_classes < 1:
            raise ConfigError(f"num_classes must be >= 1, got {num_classes}")
        self.name = name
        self.num_classes = num_classes
        try:
            self.class_names = check_class_names(class_names, num_classes)
        except ValueError as e:
            raise ConfigError(str(e)) from None
        kwargs: dict[str, Any] = {"num_classes": num_classes}
        if name in ("googlenet", "inception_v3"):
            kwargs["aux_logits"] = False  # no auxiliary heads: one output, and no weights to load for them
            kwargs["init_weights"] = True
        self.net = torchvision_architecture(name, **kwargs)

    def arch_args(self) -> dict[str, Any]:
        args: dict[str, Any] = {"name": self.name, "num_classes": self.num_classes}
        if self.class_names is not None:
            args["class_names"] = list(self.class_names)
        return args

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.net(x)
        return out[0] if isinstance(out, tuple) else out
