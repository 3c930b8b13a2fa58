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

__all__ = ["ARCHITECTURES", "build_base", "describe_base", "register_architecture"]

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
        PreTrainedModel = ()  # type: ignore[assignment]
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
            config = cls.config_class.from_dict(dict(entry.get("config", {})))
        except Exception as e:
            raise ArtifactError(f"manifest holds a config that {name} cannot read: {e}") from None
        with init_empty_weights(include_buffers=False):
            return cls(config)
    if library == "modelpress":
        cls = ARCHITECTURES.get(str(name))
        with init_empty_weights(include_buffers=False):
            return cls(**entry.get("args", {}))
    raise ArtifactError(f"manifest names an unknown model library '{library}'")
