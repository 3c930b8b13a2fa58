"""A user's own data as methods see it: any iterable of batches (a ``DataLoader``, a list)
plus, where a method needs them, a forward, a loss and a metric given as plain functions.

``compress(model, config, data=loader, forward_fn=..., loss_fn=..., eval_fn=...)`` wraps the
iterable in ``UserData`` (``ScoredUserData`` with an ``eval_fn``), which has the shape the
methods take (``data.calibration.CalibrationData`` / ``TaskData``), so nobody subclasses
``TaskAdapter``. A batch is what the iterable yields:

- a tensor: the model's input, ``model(x)``;
- a tuple / list: the first element is the input (``model(x)``; ``model(*x)`` for a tuple /
  list, ``model(**x)`` for a dict), the rest are targets;
- a dict: the model's keyword arguments, ``model(**batch)`` (a ``labels`` entry is a target).

Methods that only observe activations (GPTQ, AWQ, static int8, SmoothQuant, activation
importance) run the forward; methods that take gradients or train (fisher / Taylor
importance, fine-tuning, QAT, distillation's labels) need a loss: ``loss_fn(model, batch)``,
or by default cross-entropy for classification batches ``(inputs, integer labels)``;
methods that keep the best epoch or a quality tolerance need ``eval_fn(model) -> float``
(higher is better unless ``higher_is_better=False``).

The iterable is walked once per pass the method makes (it must be iterable more than once:
a generator is refused), in its own order and batch size: a method's ``batch_size`` and
shuffle seed do not re-batch a user's loader.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError, DataError, ModelpressError
from ..models.tasks import model_device

__all__ = ["ForwardFn", "LossFn", "ScoredUserData", "UserData", "as_data", "output_tensor", "to_device"]

ForwardFn = Callable[[nn.Module, Any], Any]
LossFn = Callable[[nn.Module, Any], torch.Tensor]
EvalFn = Callable[[nn.Module], float]

_LABEL_KEYS = ("labels", "label")


def to_device(obj: Any, device: torch.device) -> Any:
    """``obj`` with every tensor in it (nested tuples, lists, dicts) moved to ``device``."""
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, Mapping):
        return {k: to_device(v, device) for k, v in obj.items()}
    if isinstance(obj, list):
        return [to_device(v, device) for v in obj]
    if isinstance(obj, tuple):
        return tuple(to_device(v, device) for v in obj)
    return obj


def output_tensor(out: Any, what: str = "the model's output") -> torch.Tensor:
    """The prediction tensor of a forward's output: the tensor itself, ``.logits`` (a
    transformers output), a ``logits`` entry, or the first tensor of a tuple / list."""
    if isinstance(out, torch.Tensor):
        return out
    logits = getattr(out, "logits", None)
    if isinstance(logits, torch.Tensor):
        return logits
    if isinstance(out, Mapping) and isinstance(out.get("logits"), torch.Tensor):
        return out["logits"]
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    raise DataError(
        f"{what} is a {type(out).__name__}, not a tensor (nor logits, nor a tuple starting with one); "
        "pass forward_fn=(model, batch) -> tensor"
    )


def _is_labels(t: Any) -> bool:
    return (
        isinstance(t, torch.Tensor) and t.dim() == 1 and not t.is_floating_point() and t.dtype != torch.bool
    )


class UserData:
    """Any re-iterable of batches with optional ``forward_fn`` / ``loss_fn``, in the shape of
    ``CalibrationData`` (``batches``, ``loss``), for every split (a user gives one set).

    ``method``: the method running now (``compress`` sets it), named in errors."""

    task = "user"
    higher_is_better = True

    def __init__(
        self,
        data: Iterable[Any],
        *,
        forward_fn: ForwardFn | None = None,
        loss_fn: LossFn | None = None,
    ) -> None:
        if isinstance(data, (torch.Tensor, str, bytes, Mapping)) or not isinstance(data, Iterable):
            raise ConfigError(
                "data must be an iterable of batches (a DataLoader, a list of tensors / tuples / dicts) "
                f"or a task adapter, got {_kind(data)}"
            )
        if iter(data) is data:
            raise ConfigError(
                f"data is a one-shot iterator ({type(data).__name__}); methods walk the data more than once: "
                "pass a DataLoader, a list or another re-iterable collection"
            )
        for name, fn in (("forward_fn", forward_fn), ("loss_fn", loss_fn)):
            if fn is not None and not callable(fn):
                raise ConfigError(f"{name} must be a function (model, batch) -> ..., got {_kind(fn)}")
        self.data = data
        self.forward_fn = forward_fn
        self.loss_fn = loss_fn
        self.method = ""

    # -- CalibrationData ------------------------------------------------------------------

    def batches(self, split: str, batch_size: int, *, shuffle_seed: int | None = None) -> Iterator[Any]:
        """The user's batches in their own order and size (``split``, ``batch_size`` and
        ``shuffle_seed`` do not re-batch them); a ``ConfigError`` if there are none."""
        n = 0
        for b in self.data:
            n += 1
            yield b
        if n == 0:
            raise ConfigError(f"{self._who()}: data= yielded no batches")

    def calibration_forward(self, model: nn.Module, batch: Any) -> Any:
        """The forward a calibration pass runs (``data.calibration.run_forward``)."""
        return self.forward(model, batch)

    def forward(self, model: nn.Module, batch: Any) -> Any:
        """``forward_fn(model, batch)``, or the default forward of the batch's shape."""
        if self.forward_fn is not None:
            return self.forward_fn(model, batch)
        inputs = self.inputs(batch)
        try:
            return model_call(model, inputs)
        except ModelpressError:
            raise  # raised inside the forward by modelpress itself (a hook, a kernel): already clear
        except (TypeError, RuntimeError, ValueError, IndexError) as e:
            # the default forward guessed the inputs of a batch the model does not take
            first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
            raise DataError(
                f"{self._who()}: the default forward ({_call_form(inputs)}) failed on a batch of "
                f"{_describe(batch)}: {first}; pass forward_fn=(model, batch) -> output"
            ) from e

    def inputs(self, batch: Any) -> Any:
        """The model's inputs in a batch (see the module docstring), on no device yet."""
        if isinstance(batch, torch.Tensor):
            return batch
        if isinstance(batch, Mapping):
            return {k: v for k, v in batch.items() if k not in _LABEL_KEYS}
        if isinstance(batch, (tuple, list)) and batch:
            return batch[0]
        raise DataError(
            f"{self._who()}: cannot feed a batch of type {_kind(batch)} to the model (the default "
            "forward takes a tensor, a tuple / list (inputs, targets...) or a dict of keyword arguments); "
            "pass "
            "forward_fn=(model, batch) -> output"
        )

    def labels(self, batch: Any) -> torch.Tensor | None:
        """Integer class labels of a classification batch (``(inputs, labels)`` or a dict
        with ``labels``), or None."""
        if isinstance(batch, Mapping):
            t = next((batch[k] for k in _LABEL_KEYS if k in batch), None)
        elif isinstance(batch, (tuple, list)) and len(batch) == 2:
            t = batch[1]
        else:
            t = None
        return t if _is_labels(t) else None

    def logits(self, model: nn.Module, batch: Any) -> torch.Tensor:
        """The prediction tensor of the forward on ``batch``."""
        return output_tensor(self.forward(model, batch), f"{self._who()}: the model's output")

    def loss(self, model: nn.Module, batch: Any) -> torch.Tensor:
        """``loss_fn(model, batch)``, or cross-entropy of the logits against integer labels
        of a classification batch; a ``ConfigError`` naming the method otherwise."""
        if self.loss_fn is not None:
            loss = self.loss_fn(model, batch)
            if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
                raise DataError(
                    f"{self._who()}: loss_fn must return a scalar tensor (with gradients), got {_kind(loss)}"
                )
            return loss.reshape(())
        labels = self.labels(batch)
        if labels is None:
            raise ConfigError(
                f"{self._who()} needs a loss on your batches (it takes gradients or trains): pass "
                "loss_fn=(model, batch) -> scalar tensor; the default cross-entropy needs batches of "
                "(inputs, integer labels)"
            )
        logits = self.logits(model, batch)
        if logits.dim() != 2 or logits.shape[0] != labels.shape[0]:
            raise ConfigError(
                f"{self._who()}: the default cross-entropy needs (batch, classes) logits for "
                f"{labels.shape[0]} labels, the model gave {list(logits.shape)}; "
                "pass loss_fn=(model, batch) -> scalar tensor"
            )
        return F.cross_entropy(logits, labels.to(logits.device))

    def _who(self) -> str:
        return self.method or "this method"


class ScoredUserData(UserData):
    """``UserData`` with a task metric, ``eval_fn(model) -> float`` (a ``TaskData``): what
    methods that keep the best epoch or a quality tolerance call ``score``."""

    def __init__(
        self,
        data: Iterable[Any],
        *,
        eval_fn: EvalFn,
        forward_fn: ForwardFn | None = None,
        loss_fn: LossFn | None = None,
        higher_is_better: bool = True,
    ) -> None:
        super().__init__(data, forward_fn=forward_fn, loss_fn=loss_fn)
        if not callable(eval_fn):
            raise ConfigError(f"eval_fn must be a function model -> float, got {_kind(eval_fn)}")
        self.eval_fn = eval_fn
        self.higher_is_better = bool(higher_is_better)

    def score(self, model: nn.Module, split: str = "validation") -> float:
        """``eval_fn(model)`` as a finite float (the user's metric; one set for every split)."""
        return checked_score(self.eval_fn, model, self._who())


def checked_score(eval_fn: EvalFn, model: nn.Module, who: str) -> float:
    """``eval_fn(model)``, in eval mode and without gradients (the mode restored after), as a
    finite float, or one ``DataError``."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            value = eval_fn(model)
    finally:
        model.train(was_training)
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise DataError(f"{who}: eval_fn must return a finite number, got {value!r}"[:300])
    return float(value)


def model_call(model: nn.Module, inputs: Any) -> Any:
    """``model(x)``, ``model(*x)`` or ``model(**x)`` for inputs moved to the model's device."""
    x = to_device(inputs, model_device(model))
    if isinstance(x, Mapping):
        return model(**x)
    if isinstance(x, (tuple, list)):
        return model(*x)
    return model(x)


def as_data(
    data: Any,
    *,
    forward_fn: ForwardFn | None = None,
    loss_fn: LossFn | None = None,
    eval_fn: EvalFn | None = None,
    higher_is_better: bool = True,
) -> Any:
    """What ``compress`` hands the methods as ``data``: a task adapter (anything with
    ``batches`` and ``loss``) as it is, any other iterable of batches wrapped in
    ``UserData`` (``ScoredUserData`` with ``eval_fn``); ``None`` stays ``None``."""
    from .calibration import CalibrationData

    fns = {"forward_fn": forward_fn, "loss_fn": loss_fn, "eval_fn": eval_fn}
    given = [k for k, v in fns.items() if v is not None]
    if data is None or isinstance(data, (CalibrationData, UserData)):
        if given:
            what = "no data" if data is None else f"a {type(data).__name__}, which brings its own"
            raise ConfigError(
                f"{', '.join(given)} go with data= given as an iterable of batches (a DataLoader, a list); "
                f"got {what}"
            )
        return data
    if eval_fn is not None:
        return ScoredUserData(
            data, eval_fn=eval_fn, forward_fn=forward_fn, loss_fn=loss_fn, higher_is_better=higher_is_better
        )
    return UserData(data, forward_fn=forward_fn, loss_fn=loss_fn)


def _call_form(inputs: Any) -> str:
    if isinstance(inputs, Mapping):
        return "model(**batch)"
    if isinstance(inputs, (tuple, list)):
        return "model(*inputs)"
    return "model(inputs)"


def _describe(batch: Any) -> str:
    """``tuple(tensor[16, 3, 12, 12], tensor[16])``-style summary of a batch."""
    if isinstance(batch, torch.Tensor):
        return f"tensor{list(batch.shape)}"
    if isinstance(batch, Mapping):
        return "dict(" + ", ".join(f"{k}={_describe(v)}" for k, v in list(batch.items())[:6]) + ")"
    if isinstance(batch, (tuple, list)):
        return f"{type(batch).__name__}(" + ", ".join(_describe(v) for v in batch[:6]) + ")"
    return type(batch).__name__


def _kind(obj: Any) -> str:
    if obj is None:
        return "None"
    return f"a {type(obj).__name__}"
