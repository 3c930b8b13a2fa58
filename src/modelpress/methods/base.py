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
import difflib
import fnmatch
import functools
import logging
import types
import typing
from collections.abc import Callable, Sequence
from typing import Any, ClassVar, TypeVar

import torch
from torch import nn

from ..data.calibration import CalibrationData, TaskData
from ..errors import ConfigError
from ..registry import Registry

__all__ = [
    "CONFIGS",
    "HANDLERS",
    "NON_NEGATIVE",
    "POSITIVE",
    "PRESETS",
    "CalibrationData",
    "Check",
    "CompressContext",
    "MethodConfig",
    "Preset",
    "TaskData",
    "between",
    "check_patterns",
    "config_from_dict",
    "matches",
    "one_of",
    "param",
    "register",
    "register_config",
    "register_preset",
    "replace_module",
    "select",
    "select_modules",
]

C = TypeVar("C", bound="MethodConfig")

log = logging.getLogger(__name__)


# -- declared field constraints ------------------------------------------------------------
#
# Each config field is checked by the base class: first against its annotation (``int``,
# ``float``, ``bool``, ``str``, ``X | None``, ``tuple[str, ...]`` ...), then against the
# constraints declared with ``param(default, <check>...)``. Every failure reads
# "<method>: <field> must be <expectation>, got <value>". Why dataclass metadata and not
# pydantic / attrs: configs stay plain frozen dataclasses (hashable, ``dataclasses.replace``,
# the same ``to_dict`` bytes in every saved recipe) and no dependency is added.


@dataclasses.dataclass(frozen=True)
class Check:
    """One constraint: ``ok(value)`` is true when ``value`` is acceptable; ``expect`` says
    what is expected, with ``{a}`` standing for the field's type with its article ("an
    integer") and ``{noun}`` for the bare type ("integer"): ``"{a} in [2, 8]"``,
    ``"a positive {noun}"``. Without either, the type is put in front."""

    ok: Callable[[Any], bool]
    expect: str


def between(
    lo: float | None = None, hi: float | None = None, *, lo_open: bool = False, hi_open: bool = False
) -> Check:
    """A number in a range; ``between(2, 8)`` is 2..8 inclusive, ``lo_open`` excludes ``lo``."""

    def ok(v: Any) -> bool:  # written positively, so that NaN fails every range
        above = lo is None or (v > lo if lo_open else v >= lo)
        below = hi is None or (v < hi if hi_open else v <= hi)
        return bool(above and below)

    if lo is not None and hi is not None:
        expect = f"{{a}} in {'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"
    elif lo is not None:
        expect = f"{{a}} {'>' if lo_open else '>='} {lo}"
    else:
        expect = f"{{a}} {'<' if hi_open else '<='} {hi}"
    return Check(ok, expect)


POSITIVE = Check(lambda v: bool(v > 0), "a positive {noun}")
NON_NEGATIVE = Check(lambda v: bool(v >= 0), "a non-negative {noun}")


def one_of(*choices: Any) -> Check:
    """One of the given values (for a tuple field: every element)."""
    return Check(lambda v: v in choices, "one of " + ", ".join(map(str, choices)))


def param(default: Any, *checks: Check, elements: bool = False) -> Any:
    """A config field with declared constraints; ``elements=True`` checks each element of
    a tuple field instead of the tuple."""
    return dataclasses.field(default=default, metadata={"checks": checks, "elements": elements})


_ATOMS: dict[Any, tuple[type, ...]] = {int: (int,), float: (int, float), bool: (bool,), str: (str,)}
_NAMES = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}
_NOUNS = {int: "integer", float: "number", bool: "boolean", str: "string"}


def _expectation(check: Check, tp: Any) -> str:
    a, noun = _NAMES.get(tp, "a value"), _NOUNS.get(tp, "value")
    if "{a}" in check.expect or "{noun}" in check.expect:
        return check.expect.format(a=a, noun=noun)
    if check.expect.startswith("one of"):
        return check.expect
    return f"{a} {check.expect}"


def _shape_of(tp: Any) -> tuple[str, Any, bool] | None:
    """``(kind, element type, optional)`` of a simple annotation, else ``None`` (unchecked):
    kind is ``atom`` (int, float, bool, str) or ``tuple`` (``tuple[X, ...]``)."""
    args = typing.get_args(tp)
    optional = False
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        rest = [a for a in args if a is not type(None)]
        if len(rest) != 1:
            return None
        optional, tp = True, rest[0]
        args = typing.get_args(tp)
    if tp in _ATOMS:
        return "atom", tp, optional
    if typing.get_origin(tp) is tuple and len(args) == 2 and args[1] is Ellipsis and args[0] in _ATOMS:
        return "tuple", args[0], optional
    return None


def _is(v: Any, tp: Any) -> bool:
    if tp in (int, float) and isinstance(v, bool):
        return False
    return isinstance(v, _ATOMS[tp])


def _hints(cls: type) -> dict[str, Any]:
    try:
        return typing.get_type_hints(cls)
    except NameError:  # an annotation names a type imported for type checking only
        out: dict[str, Any] = {}
        for klass in reversed(cls.__mro__):
            module = vars(__import__(klass.__module__, fromlist=["_"]))
            for k, a in getattr(klass, "__annotations__", {}).items():
                try:
                    out[k] = eval(a, module) if isinstance(a, str) else a
                except NameError:
                    out[k] = None
        return out


@functools.cache
def _field_rules(cls: type) -> tuple[tuple[str, tuple[str, Any, bool] | None, tuple[Check, ...], bool], ...]:
    hints = _hints(cls)
    return tuple(
        (
            f.name,
            _shape_of(hints.get(f.name)),
            tuple(f.metadata.get("checks", ())),
            bool(f.metadata.get("elements")),
        )
        for f in dataclasses.fields(cls)
    )


@dataclasses.dataclass(frozen=True)
class MethodConfig:
    """Base of every method config. Subclasses set ``name``, declare their fields (typed,
    with ``param(...)`` constraints where the type alone does not say enough) and put
    checks across fields in ``validate``.

    Tuple fields accept a list or, for one value, a plain string: ``include: "*.attention.*"``
    is the one pattern ``("*.attention.*",)``, never its characters.
    """

    name: ClassVar[str] = ""
    # weight methods: after the handler, one note lists the layers holding weight matrices
    # of kinds the method does not handle (``handled_layers``), left in float
    notes_float_layers: ClassVar[bool] = False

    def handled_layers(self) -> tuple[type[nn.Module], ...]:
        """The layer kinds this method compresses (or deliberately keeps, e.g. dense pruning)."""
        return (nn.Linear, nn.Embedding)

    def __post_init__(self) -> None:
        cls: type = type(self)  # plain ``type``: mypy sees ``type[MethodConfig]`` as unhashable
        for fname, shape, checks, elements in _field_rules(cls):
            v = getattr(self, fname)
            if shape is not None:
                kind, tp, optional = shape
                if kind == "tuple" and isinstance(v, (str, list)):
                    v = (v,) if isinstance(v, str) else tuple(v)
                    object.__setattr__(self, fname, v)
                if v is None and optional:
                    continue
                good = _is(v, tp) if kind == "atom" else isinstance(v, tuple) and all(_is(e, tp) for e in v)
                if not good:
                    what = _NAMES[tp] if kind == "atom" else f"a list of {_NAMES[tp].split(' ', 1)[1]}s"
                    self._fail(fname, what + (" or null" if optional else ""), v)
            elif v is None:
                continue
            for c in checks:
                values = v if elements else (v,)
                if not all(c.ok(e) for e in values):
                    what = _expectation(c, shape[1] if shape else None)
                    self._fail(fname, f"a list whose every element is {what}" if elements else what, v)
        self.validate()

    def validate(self) -> None:
        """Checks across fields (raise ``self.error(...)``); the default has none."""

    def error(self, message: str) -> ConfigError:
        """A ``ConfigError`` prefixed with the method name."""
        return ConfigError(f"{self.name}: {message}")

    def _fail(self, fname: str, expect: str, v: Any) -> None:
        shown = list(v) if isinstance(v, tuple) else v
        raise self.error(f"{fname} must be {expect}, got {shown!r}")

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
    """Everything a handler may need besides the model and its config, passed explicitly.

    ``device``: where the method runs; ``compress`` moves the model (and teacher) there
    before the first handler. ``notes``: remarks the user should see (layers kept at
    higher precision and why ...); ``note`` logs each as a warning too, and ``compress``
    hands them to its caller (``compression_notes(model)``).
    """

    data: CalibrationData | None = None
    teacher: nn.Module | None = None
    device: torch.device = dataclasses.field(default_factory=lambda: torch.device("cpu"))
    progress: bool = True
    notes: list[str] = dataclasses.field(default_factory=list)
    recorded: MethodConfig | None = None  # set through ``record`` by the running handler

    def record(self, config: MethodConfig) -> None:
        """Record ``config`` in the model's recipe instead of the one the handler was given:
        the same method with the choices it made from the data filled in (e.g. per-layer
        bits), so that re-running the saved recipe reproduces them without re-measuring."""
        self.recorded = config

    def note(self, message: str, *, logger: logging.Logger | None = None) -> None:
        """A remark for the user: logged as a warning and kept for the caller of ``compress``."""
        (logger or log).warning("%s", message)
        self.notes.append(message)

    def require_data(self, method: str, why: str = "calibration data", *, score: bool = False) -> TaskData:
        """``data``, checked to provide batches and a loss (and ``score`` if asked), or one
        clear ``ConfigError`` naming the method and what it needs the data for."""
        proto = TaskData if score else CalibrationData
        if score and isinstance(self.data, CalibrationData) and getattr(self.data, "task", None) == "user":
            msg = (
                f"{method}: no eval_fn given, so it trains its epochs and keeps the last one "
                "(eval_fn=(model -> float) lets it keep the best epoch)"
            )
            if not isinstance(self.data, TaskData) and msg not in self.notes:  # a user's batches
                self.note(msg)
            return typing.cast(TaskData, self.data)
        if not isinstance(self.data, proto):
            need = "batches (any iterable of batches such as a DataLoader, or a task adapter"
            need += " with score())" if score else ")"
            got = "no data" if self.data is None else f"a {type(self.data).__name__}"
            raise ConfigError(f"{method} needs {why}: pass data= with {need}, got {got}")
        return typing.cast(TaskData, self.data)


Handler = Callable[[nn.Module, Any, CompressContext], nn.Module]
HANDLERS: dict[type[MethodConfig], Handler] = {}


def register(config_cls: type[MethodConfig]) -> Callable[[Handler], Handler]:
    """Decorator: the handler that applies ``config_cls`` to a model."""

    def deco(fn: Handler) -> Handler:
        if config_cls in HANDLERS:
            raise ValueError(f"a handler for {config_cls.__name__} is registered twice")
        if not config_cls.notes_float_layers:
            HANDLERS[config_cls] = fn
            return fn

        @functools.wraps(fn)
        def run(model: nn.Module, config: Any, ctx: CompressContext) -> nn.Module:
            from .transform import note_float_layers  # transform imports this module

            out = fn(model, config, ctx)
            note_float_layers(out, ctx, config.name, config.handled_layers())
            return out

        HANDLERS[config_cls] = run
        return fn

    return deco


# -- module selection ----------------------------------------------------------------------


def matches(name: str, include: Sequence[str], exclude: Sequence[str]) -> bool:
    """Module-name selection by shell-style patterns (``*`` matches dots too)."""
    if not any(fnmatch.fnmatchcase(name, p) for p in include):
        return False
    return not any(fnmatch.fnmatchcase(name, p) for p in exclude)


def check_patterns(model: nn.Module, method: str, include: Sequence[str], exclude: Sequence[str]) -> None:
    """Every include / exclude pattern must match at least one module name of ``model``;
    one that matches none is a typo or a pattern for another model: a ``ConfigError`` that
    names the nearest module names."""
    names = [n for n, _ in model.named_modules() if n]
    for field, patterns in (("include", include), ("exclude", exclude)):
        if isinstance(patterns, str):  # configs normalise this; direct callers may not
            patterns = (patterns,)
        for p in patterns:
            if not any(fnmatch.fnmatchcase(n, p) for n in names):
                near = difflib.get_close_matches(p, names, n=3, cutoff=0.4)
                hint = f" (nearest: {', '.join(near)})" if near else ""
                raise ConfigError(f"{method}: {field} pattern '{p}' matches no module of this model{hint}")


_NonDynamicallyQuantizableLinear = nn.modules.linear.NonDynamicallyQuantizableLinear


def select_modules(
    model: nn.Module,
    types: tuple[type[nn.Module], ...],
    include: Sequence[str],
    exclude: Sequence[str],
    *,
    method: str = "",
) -> list[tuple[str, nn.Module]]:
    """``(name, module)`` of the given types whose names pass include/exclude, in order.

    With ``method`` set, the patterns are checked first (``check_patterns``)."""
    if method:
        check_patterns(model, method, include, exclude)
    if isinstance(include, str):
        include = (include,)
    if isinstance(exclude, str):
        exclude = (exclude,)
    # Layers whose weight tensors their parent reads itself, never calling them: the
    # out_proj of torch's nn.MultiheadAttention (F.multi_head_attention_forward) and the
    # feed-forward Linears of nn.TransformerEncoderLayer / DecoderLayer (their fused
    # inference path); a replaced layer would be bypassed or break the parent.
    direct = {
        f"{p}.{c}" if p else c
        for p, parent in model.named_modules()
        if isinstance(parent, (nn.TransformerEncoderLayer, nn.TransformerDecoderLayer))
        for c in ("linear1", "linear2")
    }
    out, kept = [], []
    for n, m in model.named_modules():
        if not (isinstance(m, types) and n and matches(n, include, exclude)):
            continue
        if type(m) is _NonDynamicallyQuantizableLinear or n in direct:
            kept.append(n)
            continue
        out.append((n, m))
    if kept:
        log.warning(
            "%s: %s kept as they are: torch's nn.MultiheadAttention / nn.Transformer*Layer read these "
            "weights directly instead of calling the layers",
            method or "selection",
            ", ".join(kept[:4]) + (f" and {len(kept) - 4} more" if len(kept) > 4 else ""),
        )
    return out


def select(
    model: nn.Module, config: MethodConfig, types: tuple[type[nn.Module], ...]
) -> list[tuple[str, nn.Module]]:
    """The modules of ``types`` that ``config``'s ``include`` / ``exclude`` select, with the
    patterns checked; an empty selection is a ``ConfigError``."""
    include = getattr(config, "include", ("*",))
    exclude = getattr(config, "exclude", ())
    out = select_modules(model, types, include, exclude, method=config.name)
    if not out:
        kinds = "/".join(t.__name__ for t in types)
        raise ConfigError(f"{config.name}: no {kinds} layer matched include/exclude")
    return out


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
