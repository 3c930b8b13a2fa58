"""What every method shares: the config base, the config/handler/preset registries and the
compression context.

A method is a frozen config dataclass with a class-level ``name``, validated in
``__post_init__``, plus a handler registered for that class::

    @register_config
    @dataclass(frozen=True)
    class MyConfig(MethodConfig):
        name = "my-method"
        bits: int = 4

    @register(MyConfig)
    def _apply(model: nn.Module, config: MyConfig, ctx: CompressContext) -> nn.Module: ...

Benchmark names are *presets*: ``@register_preset("my-method-4bit", "...")`` on a function
returning the list of configs.
"""

from __future__ import annotations

import dataclasses
import fnmatch
from collections.abc import Callable, Iterable, Sequence
from typing import Any, ClassVar, TypeVar

import torch
from torch import nn

from ..errors import ConfigError
from ..registry import Registry

__all__ = [
    "CONFIGS",
    "HANDLERS",
    "PRESETS",
    "CompressContext",
    "MethodConfig",
    "Preset",
    "config_from_dict",
    "matches",
    "register",
    "register_config",
    "register_preset",
    "replace_module",
    "select_modules",
]

C = TypeVar("C", bound="MethodConfig")


@dataclasses.dataclass(frozen=True)
class MethodConfig:
    """Base of every method config. Subclasses set ``name`` and add validated fields."""

    name: ClassVar[str] = ""

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"method": self.name}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            out[f.name] = list(v) if isinstance(v, tuple) else v
        return out

    @classmethod
    def from_dict(cls: type[C], data: dict[str, Any]) -> C:
        data = dict(data)
        data.pop("method", None)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(
                f"unknown field(s) {', '.join(unknown)} for method '{cls.name}' "
                f"(known: {', '.join(sorted(known)) or 'none'})"
            )
        kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
        try:
            return cls(**kwargs)
        except TypeError as e:  # a required field is missing
            raise ConfigError(f"bad config for method '{cls.name}': {e}") from None


CONFIGS: Registry[type[MethodConfig]] = Registry("method")


def register_config(cls: type[C]) -> type[C]:
    """Class decorator: make a config known by its ``name`` (YAML recipes, the CLI)."""
    if not cls.name:
        raise TypeError(f"{cls.__name__} must set a class-level `name`")
    CONFIGS.add(cls.name, cls)
    return cls


def config_from_dict(data: dict[str, Any]) -> MethodConfig:
    if not isinstance(data, dict) or "method" not in data:
        raise ConfigError(f"each recipe entry needs a 'method' key, got {data!r}")
    return CONFIGS.get(str(data["method"])).from_dict(data)


@dataclasses.dataclass
class CompressContext:
    """Everything a handler may need besides the model and its config, passed explicitly."""

    data: Any = None  # calibration / training data (task-specific)
    teacher: nn.Module | None = None
    device: torch.device = dataclasses.field(default_factory=lambda: torch.device("cpu"))
    progress: bool = True
    # human-readable remarks a handler wants the user to see (layers kept at higher
    # precision and why ...); each is also logged as a warning where it is added
    notes: list[str] = dataclasses.field(default_factory=list)
    recorded: MethodConfig | None = None  # set through ``record`` by the running handler

    def record(self, config: MethodConfig) -> None:
        """Record ``config`` in the model's recipe instead of the one the handler was given:
        the same method with the choices it made from the data filled in (e.g. per-layer
        bits), so that re-running the saved recipe reproduces them without re-measuring."""
        self.recorded = config


Handler = Callable[[nn.Module, Any, CompressContext], nn.Module]
HANDLERS: dict[type[MethodConfig], Handler] = {}


def register(config_cls: type[MethodConfig]) -> Callable[[Handler], Handler]:
    """Decorator: the handler that applies ``config_cls`` to a model."""

    def deco(fn: Handler) -> Handler:
        if config_cls in HANDLERS:
            raise ValueError(f"a handler for {config_cls.__name__} is registered twice")
        HANDLERS[config_cls] = fn
        return fn

    return deco


def matches(name: str, include: Sequence[str], exclude: Sequence[str]) -> bool:
    """Module-name selection by shell-style patterns (``*`` matches dots too)."""
    if not any(fnmatch.fnmatchcase(name, p) for p in include):
        return False
    return not any(fnmatch.fnmatchcase(name, p) for p in exclude)


def select_modules(
    model: nn.Module, types: tuple[type[nn.Module], ...], include: Sequence[str], exclude: Sequence[str]
) -> Iterable[tuple[str, nn.Module]]:
    """``(name, module)`` of the given types whose names pass include/exclude, in order."""
    return [
        (n, m)
        for n, m in model.named_modules()
        if isinstance(m, types) and n and matches(n, include, exclude)
    ]


def replace_module(model: nn.Module, name: str, new: nn.Module) -> None:
    """Put ``new`` where the submodule ``name`` (dotted path) is."""
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


@dataclasses.dataclass(frozen=True)
class Preset:
    """A benchmark method name bound to a factory of method configs."""

    name: str
    build: Callable[[], list[MethodConfig]]
    description: str
    family: str = "baseline"


PRESETS: Registry[Preset] = Registry("benchmark method")


def register_preset(name: str, description: str, family: str = "baseline") -> Callable:
    """Decorator on a zero-argument function returning the preset's list of configs."""

    def deco(fn: Callable[[], list[MethodConfig]]) -> Callable[[], list[MethodConfig]]:
        PRESETS.add(name, Preset(name, fn, description, family))
        return fn

    return deco
