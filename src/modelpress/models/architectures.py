"""How a saved artifact names and rebuilds its base model (without pickle or eval).

Two kinds of base model:
- Hugging Face ``transformers`` models: class name + config dict. Only classes that are
  ``PreTrainedModel`` subclasses exported by ``transformers`` are accepted.
- Plain ``nn.Module`` architectures registered here by name with ``register_architecture``;
  the class provides ``arch_args()`` (JSON-able constructor kwargs).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import threading
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from ..errors import ArtifactError, ConfigError, ModelpressError
from ..registry import Registry
from .lowrank import LowRankLinear

__all__ = [
    "ARCHITECTURES",
    "STRUCTURE_ATTRS",
    "STRUCTURE_CLASSES",
    "STRUCTURE_REPLACEMENTS",
    "apply_structure",
    "build_base",
    "check_config",
    "check_config_keys",
    "describe_base",
    "describe_structure",
    "hub_offline",
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
        # remote code named by a hub config is never used: modelpress rebuilds the class
        # from transformers itself (and ``load`` refuses configs that name remote code)
        config.pop("auto_map", None)
        return {"library": "transformers", "class": type(model).__name__, "config": config}
    arch = getattr(type(model), "_modelpress_arch", None)
    if arch is None:
        raise ConfigError(
            f"cannot save a {type(model).__name__}: modelpress saves transformers models and "
            "architectures registered with modelpress.models.register_architecture"
        )
    return {"library": "modelpress", "class": arch, "args": model.arch_args()}  # type: ignore[operator]


# -- no network, no remote code --------------------------------------------------------------
#
# Config keys that make transformers fetch or run something that is not in the installed
# package: remote code (``auto_map`` / ``trust_remote_code``), backbones by hub id (resolved
# with a hub request when the config is read, or downloaded with pretrained weights), and
# attention / expert kernels named by a hub repository. Checked in every nested sub-config.
_ATTN_KEYS = frozenset({"attn_implementation", "_attn_implementation", "_attn_implementation_internal"})
_EXPERTS_KEYS = frozenset(
    {"experts_implementation", "_experts_implementation", "_experts_implementation_internal"}
)
_LOCAL_ATTENTION = (None, "eager", "sdpa")


def _remote_reason(key: str, value: Any, config: dict[str, Any]) -> str | None:
    """Why ``config[key] = value`` would reach beyond the installed code, or None."""

    def hub_like(v: Any) -> bool:
        return isinstance(v, str) and ("/" in v or ":" in v)

    if key == "auto_map" and value:
        return "names remote code (auto_map)"
    if key == "trust_remote_code" and value:
        return "asks for remote code (trust_remote_code)"
    if key == "use_pretrained_backbone" and value:
        return "asks for pretrained backbone weights (use_pretrained_backbone), a download"
    if key == "use_timm_backbone" and value:
        return "asks for a timm backbone (use_timm_backbone), which may be fetched from the hub"
    if key == "backbone" and value is not None:
        if config.get("model_type") != "timm_backbone" or hub_like(value):
            return f"names a backbone by id ({value!r}), which transformers looks up on the hub"
    if key in _ATTN_KEYS:
        values = value.values() if isinstance(value, dict) else [value]
        if any(v not in _LOCAL_ATTENTION for v in values):
            return f"asks for the attention implementation {value!r} (only eager, sdpa or none are loaded)"
    if key in _EXPERTS_KEYS:
        values = value.values() if isinstance(value, dict) else [value]
        if any(v is not None and (not isinstance(v, str) or hub_like(v)) for v in values):
            return f"asks for the experts implementation {value!r}, a hub kernel"
    return None


def check_config(config: Any, where: str = "config", _depth: int = 0) -> None:
    """Refuse (``ArtifactError``) a model config, or any sub-config nested in it, with a key
    that would make transformers fetch or run code from outside the installed packages."""
    if _depth > 32:
        raise ArtifactError(f"manifest {where} is nested more than 32 levels deep")
    if isinstance(config, dict):
        for key, value in config.items():
            reason = _remote_reason(str(key), value, config)
            if reason is not None:
                raise ArtifactError(f"manifest {where}.{key} {reason}; modelpress never does that on load")
            check_config(value, f"{where}.{key}", _depth + 1)
    elif isinstance(config, list):
        for i, value in enumerate(config):
            check_config(value, f"{where}[{i}]", _depth + 1)


@contextlib.contextmanager
def hub_offline() -> Iterator[None]:
    """Run with the Hugging Face hub switched off (``huggingface_hub`` refuses every request,
    transformers resolves only local files): building a base model never reaches the network."""
    import huggingface_hub.constants as hub_constants

    global _offline_depth, _offline_saved
    with _offline_lock:  # loads in several threads: the last one out restores the flag
        if _offline_depth == 0:
            _offline_saved = hub_constants.HF_HUB_OFFLINE
        _offline_depth += 1
        hub_constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        with _offline_lock:
            _offline_depth -= 1
            if _offline_depth == 0:
                hub_constants.HF_HUB_OFFLINE = _offline_saved


_offline_lock = threading.Lock()
_offline_depth = 0
_offline_saved = False


class _TooManyModules(BaseException):
    """Raised from inside a constructor by the module budget (not an ``Exception``: the
    constructor's own handlers must not swallow it)."""


@contextlib.contextmanager
def _module_budget(limit: int | None) -> Iterator[None]:
    """Abort a constructor that registers more than ``limit`` submodules (a config asking
    for 2**26 layers would build modules for minutes, on the meta device too)."""
    if limit is None:
        yield
        return
    from torch.nn.modules.module import register_module_module_registration_hook

    count = 0

    def hook(module: nn.Module, name: str, submodule: nn.Module | None) -> None:
        nonlocal count
        count += 1
        if count > limit:
            raise _TooManyModules()

    handle = register_module_module_registration_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def build_base(entry: dict[str, Any], *, meta: bool = False, max_modules: int | None = None) -> nn.Module:
    """An instance of the base model with parameters on the meta device (buffers real), or,
    with ``meta=True``, with everything on the meta device (nothing allocated: what ``load``
    measures and checks before it builds the real one).

    Parameters are assigned from the artifact afterwards; buffers that are not saved (e.g.
    position ids, rotary frequencies) are computed by the constructor as usual. The config is
    checked first (``check_config``) and the constructor runs with the hub offline;
    ``max_modules`` bounds the submodules it may create (``load`` derives it from the
    number of stored tensors).
    """
    try:
        return _build_base(entry, meta=meta, max_modules=max_modules)
    except _TooManyModules:
        raise ArtifactError(
            f"manifest config builds more than {max_modules} modules for an artifact of its size "
            "(check its layer counts)"
        ) from None


def _build_base(entry: dict[str, Any], *, meta: bool, max_modules: int | None) -> nn.Module:
    import torch
    from accelerate import init_empty_weights

    if not isinstance(entry, dict):
        raise ArtifactError("manifest 'base' is not an object")
    library, name = entry.get("library"), entry.get("class")
    if not isinstance(name, str):
        raise ArtifactError(f"manifest 'base' names no model class (class={name!r})")
    empty = torch.device("meta") if meta else init_empty_weights(include_buffers=False)
    if library == "transformers":
        import transformers

        try:
            cls = getattr(transformers, name, None) if name.isidentifier() else None
        except Exception:  # a lazily imported class whose backend is missing
            cls = None
        if not (isinstance(cls, type) and issubclass(cls, transformers.PreTrainedModel)):
            raise ArtifactError(f"manifest names an unknown transformers model class '{name}'")
        raw = entry.get("config", {})
        if not isinstance(raw, dict):
            raise ArtifactError(f"manifest holds a config for {name} that is not an object")
        check_config(raw)
        with hub_offline():
            try:
                config_class = cls.config_class
                assert config_class is not None
                _check_config_types(config_class, raw, name)
                check_config_keys(config_class, raw)
                config = config_class.from_dict(dict(raw))
            except ArtifactError:
                raise
            except Exception as e:
                raise ArtifactError(
                    f"manifest holds a config that {name} cannot read: {_first_line(e)}"
                ) from None
            try:
                with empty, _module_budget(max_modules):
                    return cls(config)
            except ModelpressError:
                raise
            except Exception as e:  # a config transformers accepts but cannot build (bad dims ...)
                raise ArtifactError(f"manifest config does not build a {name}: {_first_line(e)}") from None
    if library == "modelpress":
        try:
            cls = ARCHITECTURES.get(name)
        except ConfigError as e:
            raise ArtifactError(f"manifest names {e}") from None
        args = entry.get("args", {})
        if not isinstance(args, dict):
            raise ArtifactError(f"manifest holds arguments for {name} that are not an object")
        try:
            with hub_offline(), empty, _module_budget(max_modules):
                return cls(**args)
        except ModelpressError:
            raise
        except Exception as e:
            raise ArtifactError(f"manifest arguments do not build a {name}: {_first_line(e)}") from None
    raise ArtifactError(f"manifest names an unknown model library '{library}'")


def _type_ok(default: Any, value: Any) -> bool:
    """``value`` has the JSON type of the config class's default (None always passes; an
    int field may hold a list of ints: several end-of-sequence ids)."""
    if value is None or default is None:
        return True
    if isinstance(default, bool):
        return isinstance(value, bool)
    if isinstance(default, int):
        ints = value if isinstance(value, list) else [value]
        return all(isinstance(v, int) and not isinstance(v, bool) for v in ints)
    if isinstance(default, float):
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if isinstance(default, str):
        return isinstance(value, str)
    return True


def _check_config_types(config_class: type, raw: dict[str, Any], name: str) -> None:
    """Refuse a config value whose type differs from the config class's default for it
    (``"output_hidden_states": "False"``, a float layer count ...): transformers would take
    it and fail only in the first forward."""
    try:
        defaults = config_class().to_dict()
    except Exception:  # a composite config that needs its parts: nothing to compare with
        return
    for key, value in raw.items():
        if key in defaults and not _type_ok(defaults[key], value):
            raise ArtifactError(
                f"manifest gives {name}'s config {key}={value!r}, not of the type of its default "
                f"{defaults[key]!r}"
            )


# -- an allow-list of config keys per class ---------------------------------------------------
#
# A transformers config takes any key (``from_dict`` sets each as an attribute), and model code
# may read any attribute. The keys a class knows are those of its defaults (and its fields),
# plus those ``PretrainedConfig`` itself reads; a key outside that set is accepted only with a
# JSON scalar value that names nothing (a number, a bool, null, a string without '/' or ':'),
# so that an unknown key cannot carry a list, an object, or a hub id / path for code to act on.

#: keys ``PretrainedConfig`` reads besides its current defaults' keys: those of its earlier
#: versions (configs written with transformers 4 carry them all), legacy names it converts, and
#: the generation parameters it drops
_PRETRAINED_CONFIG_KEYS = frozenset(
    {
        "_attn_implementation",
        "_attn_implementation_internal",
        "_commit_hash",
        "_experts_implementation",
        "_experts_implementation_internal",
        "_name_or_path",
        "add_cross_attention",
        "architectures",
        "attn_implementation",
        "bad_words_ids",
        "begin_suppress_tokens",
        "bos_token_id",
        "chunk_size_feed_forward",
        "cross_attention_hidden_size",
        "decoder_start_token_id",
        "diversity_penalty",
        "do_sample",
        "dtype",
        "early_stopping",
        "encoder_no_repeat_ngram_size",
        "eos_token_id",
        "experts_implementation",
        "exponential_decay_length_penalty",
        "finetuning_task",
        "forced_bos_token_id",
        "forced_eos_token_id",
        "gradient_checkpointing",
        "id2label",
        "is_decoder",
        "is_encoder_decoder",
        "label2id",
        "length_penalty",
        "max_length",
        "min_length",
        "model_type",
        "name_or_path",
        "no_repeat_ngram_size",
        "num_beam_groups",
        "num_beams",
        "num_labels",
        "num_return_sequences",
        "output_attentions",
        "output_hidden_states",
        "output_scores",
        "pad_token_id",
        "partial_rotary_factor",
        "per_layer_config",
        "prefix",
        "problem_type",
        "pruned_heads",
        "remove_invalid_values",
        "repetition_penalty",
        "return_dict",
        "return_dict_in_generate",
        "rope_scaling",
        "rope_theta",
        "sep_token_id",
        "suppress_tokens",
        "task_specific_params",
        "temperature",
        "tf_legacy_loss",
        "tie_encoder_decoder",
        "tie_word_embeddings",
        "tokenizer_class",
        "top_k",
        "top_p",
        "torch_dtype",
        "torchscript",
        "transformers_version",
        "typical_p",
        "use_bfloat16",
    }
)


@functools.lru_cache(maxsize=256)
def _known_config_keys(config_class: type) -> frozenset[str] | None:
    """The keys ``config_class`` knows: those of its defaults (``config_class().to_dict()``),
    its dataclass fields (transformers 5) and ``PretrainedConfig``'s own; ``None`` where the
    class cannot build its defaults (nothing to compare with)."""
    try:
        from transformers import PretrainedConfig

        keys = set(config_class().to_dict()) | set(PretrainedConfig().to_dict())
    except Exception:
        return None
    if dataclasses.is_dataclass(config_class):
        keys |= {f.name for f in dataclasses.fields(config_class)}
    keys |= set(getattr(config_class, "attribute_map", None) or {})  # aliases (n_layer ...)
    return frozenset(keys | _PRETRAINED_CONFIG_KEYS)


def _sub_config_class(config_class: type, key: str, value: dict[str, Any]) -> type | None:
    """The config class of the sub-config ``config_class`` holds under ``key`` (``text_config``,
    ``backbone_config`` ...), resolved through ``model_type`` where the class names
    ``AutoConfig``; ``None`` if ``key`` is no sub-config or its class is unknown."""
    try:
        from transformers import CONFIG_MAPPING, PretrainedConfig

        subs = getattr(config_class, "sub_configs", None) or {}
        if key not in subs:
            return None
        sub = subs[key]
        if not (isinstance(sub, type) and issubclass(sub, PretrainedConfig)):
            model_type = value.get("model_type")
            sub = CONFIG_MAPPING[model_type] if isinstance(model_type, str) else None
    except Exception:  # a model type transformers does not know: ``from_dict`` refuses it
        return None
    return sub if isinstance(sub, type) else None


def _unnamed_scalar(value: Any) -> bool:
    if value is None or isinstance(value, (bool, int, float)):
        return True
    return isinstance(value, str) and "/" not in value and ":" not in value


def _holds(value: Any) -> str:
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, str):
        return f"the string {value[:80]!r}, which looks like a hub id or a path"
    return f"a {type(value).__name__}"


def check_config_keys(config_class: type, raw: dict[str, Any], where: str = "", _depth: int = 0) -> None:
    """Refuse (``ArtifactError``) a config key that ``config_class`` does not know (see
    ``_known_config_keys``) unless its value is a JSON scalar naming nothing: a number, a bool,
    null, or a string without '/' or ':'. Sub-configs (``text_config`` ...) are checked
    against their own class."""
    if _depth > 32:
        raise ArtifactError(f"manifest config {where.rstrip('.')} is nested more than 32 levels deep")
    known = _known_config_keys(config_class)
    if known is None:
        return
    for key, value in raw.items():
        path = f"{where}{key}"
        if key not in known:
            if not _unnamed_scalar(value):
                raise ArtifactError(
                    f"manifest config key '{path}' is not a {config_class.__name__} field and holds "
                    f"{_holds(value)}; refused"
                )
            continue
        if isinstance(value, dict):
            sub = _sub_config_class(config_class, key, value)
            if sub is not None:
                check_config_keys(sub, value, f"{path}.", _depth + 1)


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return (text.splitlines()[0] if text else type(e).__name__)[:300]


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
    "PReLU": (nn.PReLU, {"num_parameters": _INT, "init": _FLOAT}),
    "LowRankLinear": (
        LowRankLinear,
        {"in_features": _INT, "rank": _INT, "out_features": _INT, "bias": _BOOL},
    ),
}

#: class name -> the base classes it may replace (a structure entry otherwise keeps the class)
STRUCTURE_REPLACEMENTS: dict[str, tuple[type[nn.Module], ...]] = {"LowRankLinear": (nn.Linear,)}

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
            v: Any = m.has_bias if isinstance(m, LowRankLinear) else getattr(m, "bias", None) is not None
        elif arg == "padding" and isinstance(m.padding, str):
            v = m.padding
        else:
            v = getattr(m, arg)
        out[arg] = list(v) if kind == _INTS and not isinstance(v, str) else v
    return out


def _int_attrs(m: nn.Module) -> dict[str, int]:
    return {
        a: v for a in STRUCTURE_ATTRS if isinstance(v := getattr(m, a, None), int) and not isinstance(v, bool)
    }


def _stand_in_args(m: nn.Module, b: nn.Module) -> dict[str, Any] | None:
    """The constructor arguments of the plain layer of ``b``'s class that the compressed
    module ``m`` (a weight format of logical ``shape``) stands for, or ``None``: what the
    ``structure`` entry records where a structurally pruned layer was then compressed."""
    base_args = _module_args(b)
    shape = getattr(getattr(m, "weight", None), "shape", None)
    if base_args is None or not isinstance(shape, torch.Size) or len(shape) < 2:
        return None
    args = dict(base_args)
    if isinstance(b, nn.Linear):
        args.update(
            in_features=int(shape[1]), out_features=int(shape[0]), bias=getattr(m, "bias", None) is not None
        )
    elif isinstance(b, nn.Embedding):
        args.update(num_embeddings=int(shape[0]), embedding_dim=int(shape[1]))
    elif isinstance(b, (nn.Conv1d, nn.Conv2d)):
        groups = int(args.get("groups") or 1)
        args.update(in_channels=int(shape[1]) * groups, out_channels=int(shape[0]))
    else:
        return None
    return args


def _replaces(m: nn.Module, b: nn.Module) -> bool:
    """``m`` is an allowed replacement (``STRUCTURE_REPLACEMENTS``) of the base layer ``b``."""
    spec = STRUCTURE_CLASSES.get(type(m).__name__)
    allowed = STRUCTURE_REPLACEMENTS.get(type(m).__name__, ())
    return spec is not None and type(m) is spec[0] and type(b) in allowed


def describe_structure(model: nn.Module, base_entry: dict[str, Any] | None = None) -> dict[str, Any]:
    """The manifest's ``structure`` entry: what differs from a meta build of the base.

    ``{"modules": {name: {"class": "Linear", "args": {...}}}, "attributes": {name: {attr: int}}}``;
    both empty for a model whose structure its base config describes. A ``LowRankLinear``
    where the base has a ``Linear`` is recorded with its ``in_features, rank, out_features,
    bias``; its children are not in the base and get no entry.
    """
    base = build_base(base_entry if base_entry is not None else describe_base(model))
    base_modules = dict(base.named_modules())
    modules: dict[str, Any] = {}
    attributes: dict[str, dict[str, int]] = {}
    for name, m in model.named_modules():
        b = base_modules.get(name)
        if b is not None and type(b) is not type(m) and hasattr(m, "format_attrs"):
            # a compressed layer: record the plain layer it stands for where its dims changed
            stand_in = _stand_in_args(m, b)
            if stand_in is not None and stand_in != _module_args(b):
                modules[name] = {"class": type(b).__name__, "args": stand_in}
            continue
        if b is not None and _replaces(m, b):
            # another class where the base has a layer (a low-rank factorization): always recorded
            modules[name] = {"class": type(m).__name__, "args": _module_args(m)}
            continue
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
    layers of the recorded dims replace the base's (of the same class, or an allowed
    replacement: a ``LowRankLinear`` for a ``Linear``), then the recorded int attributes are set."""
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
        if type(old) is not cls and type(old) not in STRUCTURE_REPLACEMENTS.get(cls_name, ()):
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
