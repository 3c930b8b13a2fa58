"""The bench from Python for a user's own model and data: ``modelpress.bench(model, methods,
data=loader, eval_fn=..., example_inputs=...)``.

The same run as ``modelpress bench`` (``runner.run_bench``: compress, save, load back,
measure the loaded artifact, time every row round-robin) on a live module in this process:
nothing is re-imported in a subprocess, so a model defined in a notebook works. ``UserTask``
is the task adapter it builds from the user's pieces; the rows are the CLI's rows, and with
``output`` the same reports (results.json / csv / md / png) are written.

Quality is ``eval_fn(model)`` (the user's metric), or, for classification batches
``(inputs, integer labels)`` and no ``eval_fn``, the accuracy on ``eval_data`` (default:
``data``). Agreement with the original is the share of equal arg-max predictions on
``eval_data`` where the model outputs (batch, classes) or (batch, tokens, classes) scores.
Memory columns are empty for a user's own module: they are measured in a fresh process that
loads the artifact by path, which cannot build the user's class.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..data.user import EvalFn, ForwardFn, LossFn, UserData, as_data, checked_score, output_tensor
from ..errors import ConfigError, DataError, ModelpressError
from ..methods.base import PRESETS, MethodConfig
from ..models.architectures import USER_LIBRARY, describe_base
from ..models.tasks import Evaluation, TaskAdapter
from ..recipe import Recipe

__all__ = ["BenchResult", "UserTask", "bench"]

Methods = str | Sequence[Any] | Mapping[str, Any]


class UserTask(TaskAdapter):
    """A task adapter made of a user's model, batches and functions (see the module docstring)."""

    task = "user"

    def __init__(
        self,
        model: nn.Module,
        *,
        data: Iterable[Any] | None = None,
        eval_fn: EvalFn | None = None,
        example_inputs: Any = None,
        eval_data: Iterable[Any] | None = None,
        forward_fn: ForwardFn | None = None,
        loss_fn: LossFn | None = None,
        teacher: nn.Module | None = None,
        metric: str | None = None,
        higher_is_better: bool = True,
        name: str | None = None,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise ConfigError(f"bench takes a torch nn.Module, got {type(model).__name__}")
        self.model = model
        self.model_name = name or type(model).__name__
        self.teacher = teacher
        self.higher_is_better = bool(higher_is_better)
        self.eval_fn = eval_fn
        if eval_fn is not None and not callable(eval_fn):
            raise ConfigError(f"eval_fn must be a function model -> float, got {type(eval_fn).__name__}")
        # the methods' data (with eval_fn: the score of fine-tuning methods)
        self.data = as_data(
            data, forward_fn=forward_fn, loss_fn=loss_fn, eval_fn=eval_fn, higher_is_better=higher_is_better
        )
        if self.data is not None and not isinstance(self.data, UserData):
            raise ConfigError(
                "bench(model, ...) takes data= as an iterable of batches (a DataLoader, a list)"
            )
        evaluation = eval_data if eval_data is not None else data
        self.eval_data = (
            None if evaluation is None else UserData(evaluation, forward_fn=forward_fn, loss_fn=loss_fn)
        )
        if self.eval_data is not None:
            self.eval_data.method = "bench (evaluation)"
        if eval_fn is None and not self._has_labels():
            raise ConfigError(
                "bench needs a quality metric: pass eval_fn=(model -> float), or data / eval_data of "
                "classification batches (inputs, integer labels) for accuracy"
            )
        fn_name = str(getattr(eval_fn, "__name__", "score"))
        self.metric = str(metric or ("accuracy" if eval_fn is None else fn_name.replace("<lambda>", "score")))
        self._example = self._example_of(example_inputs)
        self.fresh_process = describe_base(model)["library"] != USER_LIBRARY

    # -- the pieces -------------------------------------------------------------------------

    def _has_labels(self) -> bool:
        if self.eval_data is None:
            return False
        for batch in self.eval_data.batches("test", 1):
            return self.eval_data.labels(batch) is not None
        return False

    def _example_of(self, example_inputs: Any) -> tuple[torch.Tensor, ...] | dict[str, torch.Tensor]:
        """The example as positional tensors (a tuple) or keyword tensors (a dict)."""
        if example_inputs is None:
            source = self.eval_data or self.data
            if source is None:
                raise ConfigError(
                    "bench needs example_inputs= (one batch of model inputs) or data= to time with"
                )
            example_inputs = next(iter(source.batches("test", 1)))
            example_inputs = source.inputs(example_inputs)
        if isinstance(example_inputs, torch.Tensor):
            example: Any = (example_inputs,)
        elif isinstance(example_inputs, Mapping):
            example = dict(example_inputs)
        elif isinstance(example_inputs, (tuple, list)):
            example = tuple(example_inputs)
        else:
            raise ConfigError(
                f"example_inputs must be a tensor, a tuple of tensors or a dict of tensors, "
                f"got {type(example_inputs).__name__}"
            )
        values = list(example.values()) if isinstance(example, dict) else list(example)
        if not values or not all(isinstance(v, torch.Tensor) and v.dim() >= 1 and len(v) for v in values):
            raise ConfigError("example_inputs must hold tensors with a batch dimension of at least one row")
        if len({len(v) for v in values}) != 1:
            raise ConfigError("the tensors of example_inputs must have the same batch size (first dim)")
        return example

    def compress_kwargs(self) -> dict[str, Any]:
        return {"data": self.data, "teacher": self.teacher}

    def load_artifact(self, path: Any) -> nn.Module:
        from ..api import load

        return load(path, model=self._fresh()) if not self.fresh_process else load(path)

    def _fresh(self) -> nn.Module:
        """A fresh instance of the user's module (a copy of the original; its weights are
        replaced by the artifact's)."""
        return copy.deepcopy(self.model).cpu()

    # -- TaskAdapter ------------------------------------------------------------------------

    def load_original(self, *, progress: bool = True) -> nn.Module:
        return self.model

    def example_inputs(self, batch_size: int) -> Any:  # a tuple for positional inputs
        """``batch_size`` rows of the example, its own rows repeated in order."""

        def rows(t: torch.Tensor) -> torch.Tensor:
            return t[torch.arange(batch_size) % len(t)].contiguous()

        if isinstance(self._example, dict):
            return {k: rows(v) for k, v in self._example.items()}
        return tuple(rows(v) for v in self._example)

    def evaluate(
        self,
        model: nn.Module,
        *,
        reference: torch.Tensor | None = None,
        device: torch.device | str = "cpu",
        progress: bool = True,
    ) -> Evaluation:
        t0 = time.perf_counter()
        predictions, correct, total = self._predict(model)
        if self.eval_fn is not None:
            value = checked_score(self.eval_fn, model, "bench")
        elif total:
            value = correct / total
        else:
            raise DataError("bench: the evaluation data gave no labelled examples for accuracy")
        agreement = None
        if reference is not None and predictions.numel() and reference.shape == predictions.shape:
            agreement = float((predictions == reference).double().mean())
        return Evaluation(self.metric, value, predictions, agreement, time.perf_counter() - t0)

    @torch.no_grad()
    def _predict(self, model: nn.Module) -> tuple[torch.Tensor, int, int]:
        """Arg-max predictions on the evaluation data (empty where the output is no class
        scores), and the correct / labelled counts for the default accuracy."""
        if self.eval_data is None:
            return torch.empty(0, dtype=torch.long), 0, 0
        was_training = model.training
        model.eval()
        preds: list[torch.Tensor] = []
        correct = total = 0
        try:
            for batch in self.eval_data.batches("test", 1):
                out = output_tensor(self.eval_data.forward(model, batch), "bench: the model's output")
                if out.dim() not in (2, 3) or not out.is_floating_point():
                    return torch.empty(0, dtype=torch.long), 0, 0
                p = out.argmax(-1).cpu()
                preds.append(p.reshape(-1))
                labels = self.eval_data.labels(batch)
                if labels is not None and p.dim() == 1 and len(labels) == len(p):
                    correct += int((p == labels.cpu()).sum())
                    total += len(labels)
        finally:
            model.train(was_training)
        return torch.cat(preds) if preds else torch.empty(0, dtype=torch.long), correct, total

    def batches(self, split: str, batch_size: int, *, shuffle_seed: int | None = None) -> Iterable[Any]:
        if self.data is None:
            raise ConfigError("this method needs data=: pass an iterable of batches (a DataLoader, a list)")
        return self.data.batches(split, batch_size, shuffle_seed=shuffle_seed)

    def loss(self, model: nn.Module, batch: Any) -> torch.Tensor:
        if self.data is None:
            raise ConfigError("this method needs data=: pass an iterable of batches (a DataLoader, a list)")
        return self.data.loss(model, batch)

    def score(self, model: nn.Module, split: str = "validation") -> float:
        return self.evaluate(model).value

    def describe(self) -> dict[str, Any]:
        ex = self._example
        shapes = (
            {k: list(v.shape[1:]) for k, v in ex.items()}
            if isinstance(ex, dict)
            else [list(v.shape[1:]) for v in ex]
        )
        one = shapes[0] if isinstance(shapes, list) and len(shapes) == 1 else shapes
        n = None
        if self.eval_data is not None:
            n = sum(1 for _ in self.eval_data.batches("test", 1))
        return {
            "task": self.task,
            "metric": self.metric,
            "model": self.model_name,
            "seq_len": None,
            "inputs": f"inputs of shape {one}"[:200],
            "data": "the user's batches" + (f" ({n} evaluation batches)" if n is not None else ""),
        }


@dataclasses.dataclass
class BenchResult:
    """What ``bench`` measured: ``rows`` (the CLI's rows, one dict per method), ``env`` (the
    report header: machine, software, original quality), and ``reports`` (the files written
    into ``output``, empty without one)."""

    rows: list[dict[str, Any]]
    env: dict[str, Any]
    reports: dict[str, Path] = dataclasses.field(default_factory=dict)

    def dataframe(self) -> Any:
        """The rows as a pandas ``DataFrame`` (one row per method, indexed by method)."""
        try:
            import pandas as pd
        except ImportError:
            raise ModelpressError(
                "BenchResult.dataframe() needs pandas (pip install pandas); the rows are in .rows"
            ) from None
        return pd.DataFrame(self.rows).set_index("method")

    def __getitem__(self, method: str) -> dict[str, Any]:
        """The row of one method."""
        for r in self.rows:
            if r["method"] == method:
                return r
        raise KeyError(method)


def _methods(methods: Methods) -> list[tuple[str, Recipe]]:
    """``"fp32,int8-dynamic"``, a list of names / (label, recipe or config) pairs, or a
    mapping label -> recipe / config / list of configs / name."""
    from ..recipe import resolve_methods

    if isinstance(methods, str):
        return resolve_methods(methods)
    items = list(methods.items()) if isinstance(methods, Mapping) else list(methods)
    out: list[tuple[str, Recipe]] = []
    for item in items:
        if isinstance(item, str):
            out += resolve_methods([item])
            continue
        if isinstance(item, MethodConfig):
            out.append((item.name, Recipe([item])))
            continue
        if not (isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str)):
            raise ConfigError(
                "bench methods are names ('int8-dynamic'), method configs, or (label, recipe) pairs; "
                f"got {item!r}"[:300]
            )
        label, spec = item
        if isinstance(spec, Recipe):
            out.append((label, spec))
        elif isinstance(spec, MethodConfig):
            out.append((label, Recipe([spec])))
        elif isinstance(spec, str) and spec in PRESETS:
            out.append((label, Recipe(PRESETS.get(spec).build())))
        elif isinstance(spec, (list, tuple)) and all(isinstance(c, MethodConfig) for c in spec):
            out.append((label, Recipe(list(spec))))
        else:
            raise ConfigError(
                f"bench method '{label}': expected a Recipe, a method config, a list of them or a "
                f"method name, got {type(spec).__name__}"
            )
    if not out:
        raise ConfigError("no methods given")
    return out


def bench(
    model: nn.Module,
    methods: Methods,
    *,
    data: Iterable[Any] | None = None,
    eval_fn: Callable[[nn.Module], float] | None = None,
    example_inputs: Any = None,
    eval_data: Iterable[Any] | None = None,
    forward_fn: ForwardFn | None = None,
    loss_fn: LossFn | None = None,
    teacher: nn.Module | None = None,
    metric: str | None = None,
    higher_is_better: bool = True,
    output: str | os.PathLike[str] | None = None,
    name: str | None = None,
    device: str = "auto",
    threads: int | None = None,
    rounds: int = 4,
    measure_memory: bool = True,
    progress: bool = True,
) -> BenchResult:
    """Compress ``model`` with each of ``methods``, save and load every result, and measure
    it as ``modelpress bench`` does: size on disk, quality, agreement, CPU latency and
    throughput (round-robin), GPU latency on CUDA; returns the rows (``BenchResult``;
    ``.dataframe()`` with pandas).

    ``methods``: ``"fp32,int8-dynamic"``, a list of names / method configs / (label, recipe)
    pairs, or a dict label -> recipe. ``data``: the batches methods calibrate and train on
    (any iterable: a ``DataLoader``, a list), with ``forward_fn`` / ``loss_fn`` as in
    ``compress``; ``eval_fn(model) -> float``: the quality column (default: accuracy on
    classification batches of ``eval_data``, which defaults to ``data``); ``example_inputs``:
    one batch of model inputs for timing (default: the first batch's inputs); ``teacher``:
    for distillation methods. ``output``: a directory for the artifacts and the reports
    (results.json / csv / md / png); without it the artifacts go to a temporary directory,
    removed after. The model is benchmarked in this process (a notebook's module works).
    """
    from .report import write_reports
    from .runner import BenchOptions, run_bench

    recipes = _methods(methods)
    task = UserTask(
        model,
        data=data,
        eval_fn=eval_fn,
        example_inputs=example_inputs,
        eval_data=eval_data,
        forward_fn=forward_fn,
        loss_fn=loss_fn,
        teacher=teacher,
        metric=metric,
        higher_is_better=higher_is_better,
        name=name,
    )
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
        raise ConfigError(f"rounds must be an integer >= 1, got {rounds!r}")

    def options(out: Path, keep: bool) -> BenchOptions:
        return BenchOptions(
            out,
            device=device,
            threads=threads,
            progress=progress,
            measure_memory=measure_memory,
            keep_artifacts=keep,
            rounds=rounds,
            decode_tokens=0,
            backends=("torch",),
        )

    if output is not None:
        result = run_bench(task, recipes, options(Path(output), True))
        reports = write_reports(result, Path(output))
        return BenchResult(result["rows"], result["env"], reports)
    with tempfile.TemporaryDirectory(prefix="modelpress-bench-") as tmp:
        result = run_bench(task, recipes, options(Path(tmp), False))
    return BenchResult(result["rows"], result["env"])
