"""Recipes: ordered lists of method configs, read from and written to YAML.

A recipe is saved inside every artifact's manifest. ``resolve_methods`` turns the CLI's
``--methods`` value (benchmark names and/or recipe files) into labelled recipes.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError
from .methods.base import PRESETS, MethodConfig, config_from_dict

__all__ = ["Recipe", "resolve_methods"]


class Recipe:
    """An ordered, immutable list of method configs."""

    def __init__(self, methods: Iterable[MethodConfig] = ()) -> None:
        methods = tuple(methods)
        for m in methods:
            if not isinstance(m, MethodConfig):
                raise ConfigError(f"a recipe holds method configs, got {type(m).__name__}")
        self.methods: tuple[MethodConfig, ...] = methods

    def __iter__(self) -> Iterator[MethodConfig]:
        return iter(self.methods)

    def __len__(self) -> int:
        return len(self.methods)

    def __add__(self, other: Recipe) -> Recipe:
        return Recipe(self.methods + tuple(other.methods))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Recipe) and self.methods == other.methods

    def __hash__(self) -> int:
        return hash(self.methods)

    def __repr__(self) -> str:
        return f"Recipe({list(self.methods)!r})"

    def to_list(self) -> list[dict[str, Any]]:
        return [m.to_dict() for m in self.methods]

    @classmethod
    def from_list(cls, data: Sequence[dict[str, Any]]) -> Recipe:
        return cls(config_from_dict(d) for d in data)

    def to_yaml(self) -> str:
        return yaml.safe_dump({"methods": self.to_list()}, sort_keys=False)

    @classmethod
    def from_yaml(cls, text: str) -> Recipe:
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise ConfigError(f"recipe is not valid YAML: {e}") from None
        except RecursionError:
            raise ConfigError("recipe is nested too deeply to be read") from None
        if data is None:
            return cls()
        if isinstance(data, dict):
            data = data.get("methods", [])
        if not isinstance(data, list):
            raise ConfigError("a recipe is a YAML list of methods, or a mapping with a 'methods' list")
        return cls.from_list(data)

    @classmethod
    def load(cls, path: str | Path) -> Recipe:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as e:
            raise ConfigError(f"cannot read recipe {path}: {e.strerror or e}") from None
        except UnicodeDecodeError as e:
            raise ConfigError(f"recipe {path} is not UTF-8 text ({e.reason} at byte {e.start})") from None
        return cls.from_yaml(text)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_yaml())

    def describe(self) -> str:
        """Short human form: ``int8-dynamic -> ...``, or ``none`` for the original."""
        return " -> ".join(m.name for m in self.methods) or "none"


def resolve_methods(spec: str | Sequence[str]) -> list[tuple[str, Recipe]]:
    """Turn ``"fp32,int8-dynamic"`` or a recipe YAML path into ``[(label, Recipe), ...]``."""
    items = [s.strip() for s in spec.split(",")] if isinstance(spec, str) else list(spec)
    out: list[tuple[str, Recipe]] = []
    for item in items:
        if not item:
            continue
        if item.endswith((".yaml", ".yml")) or Path(item).is_file():
            path = Path(item)
            if not path.is_file():
                raise ConfigError(f"recipe file not found: {item}")
            out.append((path.stem, Recipe.load(path)))
        else:
            out.append((item, Recipe(PRESETS.get(item).build())))
    if not out:
        raise ConfigError("no methods given")
    return out
