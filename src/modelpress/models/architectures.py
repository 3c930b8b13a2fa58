"""How a saved artifact names and rebuilds its base model (without pickle or eval).

Two kinds of base model:
- Hugging Face ``transformers`` models: class name + config dict. Only classes that are
  ``PreTrainedModel`` subclasses exported by ``transformers`` are accepted.
- Plain ``nn.Module`` architectures registered here by name with ``register_architecture``;
  the class provides ``arch_args()`` (JSON-able constructor kwargs).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from ..errors import ArtifactError
from ..registry import Registry

__all__ = [
    "ARCHITECTURES",
    "STRUCTURE_ATTRS",
    "STRUCTURE_CLASSES",
    "apply_structure",
    "build_base",
    "describe_base",
    "describe_structure",
    "register_architecture",
]

ARCHITECTURES: Registry[type[nn.Module]] = Registry("model architecture")


def register_architecture(name: str):
    """Class decorator for non-transformers models that ``modelpress.load`` can rebuild."""

    def deco(cls: type[nn.Module]) -> type[nn.Module]:
        if not hasattr(cls, "arch_args"):
            raise TypeError(f"{cls.__name__} needs an arch_args() method returning its constructor kwargs")
        cls._modelpress_arch = name  # type: ignore[attr-defined]
        ARCHITECTURES.add(name, cls)
        return cls

    return deco


def describe_base(model: nn.Module) -> dict[str, Any]:
    """The manifest's ``base`` entry for a (possibly compressed) model."""
    try:
        from transformers import PreTrainedModel
    except ImportError:  # pragma: no cover - transformers is a dependency
        PreTrainedModel = ()  # type: ignore[assignment,misc]
    if isinstance(model, PreTrainedModel):
        config = model.config.to_dict()
        config.pop("quantization_config", None)  # e.g. left by a GGUF load; weights are plain now
        return {"library": "transformers", "class": type(model).__name__, "config": config}
    arch = getattr(type(model), "_modelpress_arch", None)
    if arch is None:
        raise TypeError(
            f"cannot save a {type(model).__name__}: modelpress saves transformers models and "
            "architectures registered with modelpress.models.register_architecture"
        )
    return {"library": "modelpress", "class": arch, "args": model.arch_args()}  # type: ignore[operator]


def build_base(entry: dict[str, Any]) -> nn.Module:
    """An instance of the base model with parameters on the meta device (buffers real).

    Parameters are assigned from the artifact afterwards; buffers that are not saved (e.g.
    position ids, rotary frequencies) are computed by the constructor as usual.
    """
    from accelerate import init_empty_weights

    library, name = entry.get("library"), entry.get("class")
    if library == "transformers":
        import transformers

        cls = getattr(transformers, str(name), None)
        if not (isinstance(cls, type) and issubclass(cls, transformers.PreTrainedModel)):
            raise ArtifactError(f"manifest names an unknown transformers model class '{name}'")
        try:
            config_class = cls.config_class
            assert config_class is not None
            config = config_class.from_dict(dict(entry.get("config", {})))
        except Exception as e:
            raise ArtifactError(f"manifest holds a config that {name} cannot read: {e}") from None
        with init_empty_weights(include_buffers=False):
            return cls(config)
    if library == "modelpress":
        cls = ARCHITECTURES.get(str(name))
        with init_empty_weights(include_buffers=False):
            return cls(**entry.get("args", {}))
    raise ArtifactError(f"manifest names an unknown model library '{library}'")


# -- changed structure (structured pruning) ------------------------------------------------
#
# A structurally pruned model no longer matches what ``build_base`` constructs from its
# config (heads or FFN neurons removed per layer, conv filters removed, ...), and transformers
# has no per-layer head counts in its configs. The manifest's ``structure`` entry records the
# difference against a meta-device build of the base: every layer of a whitelisted class whose
# constructor dims differ (class + JSON-able constructor arguments), and the changed plain int
# attributes of any module (e.g. ``BertSelfAttention.num_attention_heads``). Loading rebuilds
# the base, puts meta layers of the recorded dims in place and sets the attributes, before the
# state dict is assigned. Only the classes and attribute names below are accepted.

_BOOL, _INT, _FLOAT, _INTS, _STR = "bool", "int", "float", "ints", "str"

# class name -> (class, {constructor argument: kind}); values are read back from the module
STRUCTURE_CLASSES: dict[str, tuple[type[nn.Module], dict[str, str]]] = {
    "Linear": (nn.Linear, {"in_features": _INT, "out_features": _INT, "bias": _BOOL}),
    **{
        cls.__name__: (
            cls,
            {
                "in_channels": _INT,
                "out_channels": _INT,
                "kernel_size": _INTS,
                "stride": _INTS,
                "padding": _INTS,
                "dilation": _INTS,
                "groups": _INT,
                "bias": _BOOL,
                "padding_mode": _STR,
            },
        )
        for cls in (nn.Conv1d, nn.Conv2d)
    },
    **{
        cls.__name__: (
            cls,
            {
                "num_features": _INT,
                "eps": _FLOAT,
                "momentum": _FLOAT,
                "affine": _BOOL,
                "track_running_stats": _BOOL,
            },
        )
        for cls in (nn.BatchNorm1d, nn.BatchNorm2d)
    },
    "LayerNorm": (
        nn.LayerNorm,
        {"normalized_shape": _INTS, "eps": _FLOAT, "elementwise_affine": _BOOL, "bias": _BOOL},
    ),
    "Embedding": (nn.Embedding, {"num_embeddings": _INT, "embedding_dim": _INT, "padding_idx": _INT}),
}

#: int attributes a structural rewrite may change (head counts, sizes, cache layer indices)
STRUCTURE_ATTRS = frozenset(
    {
        "num_attention_heads",
        "all_head_size",
        "num_key_value_groups",
        "num_heads",
        "num_key_value_heads",
        "intermediate_size",
        "layer_idx",
    }
)

_PADDING_MODES = frozenset({"zeros", "reflect", "replicate", "circular"})


def _module_args(m: nn.Module) -> dict[str, Any] | None:
    """Constructor arguments of a whitelisted layer (exact class match), else None."""
    spec = STRUCTURE_CLASSES.get(type(m).__name__)
    if spec is None or type(m) is not spec[0]:
        return None
    out: dict[str, Any] = {}
    for arg, kind in spec[1].items():
        if arg == "bias":
            v: Any = getattr(m, "bias", None) is not None
        elif arg == "padding" and isinstance(m.padding, str):  # type: ignore[attr-defined]
            v = m.padding  # type: ignore[attr-defined]
        else:
            v = getattr(m, arg)
        out[arg] = list(v) if kind == _INTS and not isinstance(v, str) else v
    return out


def _int_attrs(m: nn.Module) -> dict[str, int]:
    return {
        a: v for a in STRUCTURE_ATTRS if isinstance(v := getattr(m, a, None), int) and not isinstance(v, bool)
    }


def describe_structure(model: nn.Module, base_entry: dict[str, Any] | None = None) -> dict[str, Any]:
    """The manifest's ``structure`` entry: what differs from a meta build of the base.

    ``{"modules": {name: {"class": "Linear", "args": {...}}}, "attributes": {name: {attr: int}}}``;
    both empty for a model whose structure its base config describes.
    """
    base = build_base(base_entry if base_entry is not None else describe_base(model))
    base_modules = dict(base.named_modules())
    modules: dict[str, Any] = {}
    attributes: dict[str, dict[str, int]] = {}
    for name, m in model.named_modules():
        b = base_modules.get(name)
        if b is None or type(b) is not type(m):
            continue
        args = _module_args(m)
        if args is not None and args != _module_args(b):
            modules[name] = {"class": type(m).__name__, "args": args}
        mine, theirs = _int_attrs(m), _int_attrs(b)
        changed = {a: v for a, v in sorted(mine.items()) if a in theirs and theirs[a] != v}
        if changed:
            attributes[name] = changed
    return {"modules": modules, "attributes": attributes}


def _checked_args(name: str, cls_name: str, args: Any) -> dict[str, Any]:
    spec = STRUCTURE_CLASSES.get(cls_name)
    if spec is None:
        raise ArtifactError(f"manifest gives module '{name}' the unsupported structure class '{cls_name}'")
    if not isinstance(args, dict) or set(args) != set(spec[1]):
        raise ArtifactError(
            f"manifest gives module '{name}' ({cls_name}) arguments {args!r}; expected {sorted(spec[1])}"
        )

    def ok(kind: str, v: Any) -> bool:
        if kind == _BOOL:
            return isinstance(v, bool)
        if kind == _INT:
            return v is None or (isinstance(v, int) and not isinstance(v, bool) and v >= 0)
        if kind == _FLOAT:
            return v is None or (isinstance(v, (int, float)) and not isinstance(v, bool))
        if kind == _INTS:
            return (
                isinstance(v, list)
                and all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in v)
            ) or (v in ("same", "valid"))
        return v in _PADDING_MODES

    out = {}
    for arg, kind in spec[1].items():
        v = args[arg]
        if not ok(kind, v):
            raise ArtifactError(f"manifest gives module '{name}' a bad {cls_name} argument {arg}={v!r}")
        out[arg] = tuple(v) if isinstance(v, list) else v
    return out


def apply_structure(model: nn.Module, structure: Any) -> None:
    """Reshape a freshly built base (in place) to the manifest's ``structure`` entry: meta
    layers of the recorded dims replace the base's, then the recorded int attributes are set."""
    if not structure:
        return
    if not isinstance(structure, dict) or set(structure) - {"modules", "attributes"}:
        raise ArtifactError("manifest has a malformed 'structure' entry")
    import torch

    for name, entry in dict(structure.get("modules", {})).items():
        if not isinstance(entry, dict):
            raise ArtifactError(f"manifest has a malformed structure entry for module '{name}'")
        cls_name = str(entry.get("class"))
        args = _checked_args(name, cls_name, entry.get("args"))
        try:
            old = model.get_submodule(name)
        except AttributeError:
            raise ArtifactError(
                f"manifest reshapes module '{name}', which the base model does not have"
            ) from None
        cls = STRUCTURE_CLASSES[cls_name][0]
        if type(old) is not cls:
            raise ArtifactError(
                f"manifest reshapes '{name}' as {cls_name}, but the base model has a {type(old).__name__}"
            )
        try:
            with torch.device("meta"):
                new = cls(**args)
        except (TypeError, ValueError, RuntimeError) as e:
            raise ArtifactError(
                f"manifest gives module '{name}' arguments {cls_name} cannot take: {e}"
            ) from None
        new.train(old.training)
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child, new)
    for name, attrs in dict(structure.get("attributes", {})).items():
        try:
            mod = model.get_submodule(name)
        except AttributeError:
            raise ArtifactError(
                f"manifest sets attributes of '{name}', which the base model does not have"
            ) from None
        if not isinstance(attrs, dict):
            raise ArtifactError(f"manifest has malformed attributes for module '{name}'")
        for attr, v in attrs.items():
            cur = getattr(mod, attr, None)
            if (
                attr not in STRUCTURE_ATTRS
                or not isinstance(cur, int)
                or isinstance(cur, bool)
                or not isinstance(v, int)
                or isinstance(v, bool)
                or v < 0
            ):
                raise ArtifactError(
                    f"manifest sets '{name}.{attr}' to {v!r}, which modelpress does not accept"
                )
            setattr(mod, attr, v)
