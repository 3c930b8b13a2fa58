"""The one fine-tuning loop of modelpress.

Every method that trains (the default model's head, QAT, centroid tuning, gradual pruning,
distillation) goes through ``fit``: AdamW with linear warm-up and decay, gradient clipping,
a progress bar, evaluation after each epoch, early stopping on the validation metric with
the best weights restored, a fixed seed, an ``after_step`` hook (e.g. to re-apply pruning
masks), and checkpoint / resume (``checkpoint=Checkpointing(dir, every)``): a resumed run
ends with the same weights as an uninterrupted one.

Checkpoints are safetensors + JSON only (no pickle): the model's state dict, the optimizer's
tensors, the best weights so far, the torch RNG state, and a JSON file with the step, the
position inside the epoch, the scheduler, the history and Python's RNG state. Each is written
to a temporary directory and renamed into place, so an interrupted save leaves the previous
checkpoint intact.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import os
import random
import shutil
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm.auto import tqdm

from ..errors import ConfigError

__all__ = [
    "Checkpointing",
    "DataSizedSchedule",
    "FitResult",
    "TrainConfig",
    "config_key",
    "fit",
    "seed_everything",
]

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    epochs: int = 1
    lr: float = 5e-5
    weight_decay: float = 0.01
    warmup_ratio: float = 0.06
    grad_clip: float | None = 1.0
    max_steps: int | None = None  # stop after this many optimizer steps (over all epochs)
    patience: int | None = 1  # epochs without improvement before stopping; None = never
    seed: int = 0
    min_steps: int | None = None  # early stopping never ends a run before this many optimizer steps

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ConfigError(f"epochs must be >= 1, got {self.epochs}")
        if not self.lr > 0:
            raise ConfigError(f"lr must be > 0, got {self.lr}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ConfigError(f"max_steps must be >= 1, got {self.max_steps}")
        if self.min_steps is not None and self.min_steps < 0:
            raise ConfigError(f"min_steps must be >= 0, got {self.min_steps}")


# Fields added to TrainConfig after caches were first keyed by it; left at None they change
# nothing, so ``config_key`` leaves them out and those caches stay valid.
_LATER_FIELDS = ("min_steps",)


def config_key(config: TrainConfig) -> dict[str, Any]:
    """``config`` as a dict for cache keys: the fields of ``_LATER_FIELDS`` left at None are
    dropped, so a training that did not change keeps its key."""
    d = dataclasses.asdict(config)
    return {k: v for k, v in d.items() if not (k in _LATER_FIELDS and v is None)}


@dataclasses.dataclass(frozen=True)
class DataSizedSchedule:
    """How long to train an original on data of any size, in optimizer steps.

    Where ``epochs`` epochs of the train split are fewer than ``target_steps`` steps (a small
    user dataset: one epoch of 497 examples at batch 32 is 16 steps, which barely moves a
    pretrained classifier off the majority class), the run is planned for as many epochs as
    ``target_steps`` take, and early stopping ends it once the validation metric has not
    improved for more than a quarter of them (at least 3 epochs), never before half of
    ``target_steps``; the best validation epoch is kept. Where the planned epochs are more
    than ``max_steps`` steps (a large dataset), the run stops at ``max_steps``. In between
    the configured schedule runs unchanged.
    """

    target_steps: int
    max_steps: int | None = None

    def __post_init__(self) -> None:
        if self.target_steps < 1 or (self.max_steps is not None and self.max_steps < self.target_steps):
            raise ConfigError(
                f"need 1 <= target_steps <= max_steps, got {self.target_steps} and {self.max_steps}"
            )

    def plan(self, config: TrainConfig, steps_per_epoch: int) -> tuple[TrainConfig, str | None]:
        """The config to run on a train split of ``steps_per_epoch`` batches, and a sentence
        saying how it differs from ``config`` (None where it does not)."""
        spe = max(1, steps_per_epoch)
        planned = spe * config.epochs
        if planned < self.target_steps:
            epochs = -(-self.target_steps // spe)
            patience = max(2, -(-epochs // 4))
            new = dataclasses.replace(
                config, epochs=epochs, patience=patience, min_steps=self.target_steps // 2
            )
            return new, (
                f"the train split is small ({spe} steps an epoch): planned for {epochs} epochs "
                f"({spe * epochs} steps), early stopping after {patience + 1} epochs without a better "
                f"validation score, not before step {self.target_steps // 2}"
            )
        if self.max_steps is not None and planned > self.max_steps:
            if config.max_steps is None or config.max_steps > self.max_steps:
                return dataclasses.replace(config, max_steps=self.max_steps), (
                    f"the train split is large ({spe} steps an epoch): capped at {self.max_steps} steps"
                )
        return config, None


@dataclasses.dataclass
class FitResult:
    steps: int
    seconds: float
    history: list[dict[str, float]]  # one entry per epoch: loss, metric
    best_metric: float | None
    best_epoch: int | None
    stop_reason: str = ""  # why the run ended: planned epochs done, step cap, or early stop

    def summary(self, metric: str = "validation metric") -> str:
        """One sentence for reports: epochs run, why it stopped, the epoch kept, the curve."""
        scored = [e for e in self.history if "metric" in e]
        if len(scored) <= 16:
            curve = ", ".join(f"{e['metric']:.4g}" for e in scored)
        else:  # long runs: 12 epochs spread over the run, the last included, with their numbers
            picks = sorted({round(i * (len(scored) - 1) / 11) for i in range(12)})
            curve = ", ".join(f"{scored[i]['epoch']}: {scored[i]['metric']:.4g}" for i in picks)
        out = f"{len(self.history)} epochs ({self.steps} steps), stopped: {self.stop_reason}"
        if self.best_epoch is not None and self.best_metric is not None:
            out += f"; kept epoch {self.best_epoch} ({metric} {self.best_metric:.4g})"
        return out + (f"; {metric} by epoch: {curve}" if curve else "")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


@dataclasses.dataclass(frozen=True)
class Checkpointing:
    """Save the training state to ``directory`` every ``every`` optimizer steps (and at the
    end of each epoch); with ``resume`` a run finding a checkpoint there continues from it."""

    directory: str | os.PathLike
    every: int = 100
    resume: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.every, int) or self.every < 1:
            raise ConfigError(f"checkpoint every must be a positive number of steps, got {self.every!r}")


_CKPT_STATE = "state.json"
_CKPT_MODEL = "model.safetensors"
_CKPT_OPT = "optimizer.safetensors"
_CKPT_BEST = "best.safetensors"
_CKPT_RNG = "rng.safetensors"


def _flat_optimizer(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """AdamW's state dict as flat tensors (``{param_idx}.{name}``) + JSON-able groups."""
    sd = opt.state_dict()
    tensors = {
        f"{idx}.{name}": v.detach().cpu().contiguous()
        for idx, st in sd["state"].items()
        for name, v in st.items()
        if isinstance(v, torch.Tensor)
    }
    scalars = {
        f"{idx}.{name}": v
        for idx, st in sd["state"].items()
        for name, v in st.items()
        if not isinstance(v, torch.Tensor)
    }
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def _unflat_optimizer(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for key, v in [*tensors.items(), *meta["scalars"].items()]:
        idx, _, name = key.partition(".")
        state.setdefault(int(idx), {})[name] = v
    groups = [dict(g, betas=tuple(g["betas"])) if "betas" in g else g for g in meta["param_groups"]]
    return {"state": state, "param_groups": groups}


def _save_checkpoint(
    directory: Path,
    model: nn.Module,
    opt: torch.optim.Optimizer,
    info: dict[str, Any],
    best_state: dict[str, torch.Tensor] | None,
) -> None:
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = directory.parent / f".{directory.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        save_file(_contiguous(model.state_dict()), str(tmp / _CKPT_MODEL))
        opt_tensors, opt_meta = _flat_optimizer(opt)
        save_file(opt_tensors, str(tmp / _CKPT_OPT))
        if best_state is not None:
            save_file(_contiguous(best_state), str(tmp / _CKPT_BEST))
        save_file({"torch": torch.get_rng_state()}, str(tmp / _CKPT_RNG))
        py_state = random.getstate()
        info = dict(info, optimizer=opt_meta, python_rng=[py_state[0], list(py_state[1]), py_state[2]])
        (tmp / _CKPT_STATE).write_text(json.dumps(info))
        old = directory.parent / f".{directory.name}.old-{os.getpid()}"
        if directory.exists():
            directory.rename(old)
        tmp.rename(directory)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _contiguous(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A state dict safetensors can write: contiguous CPU tensors, shared storage cloned."""
    out: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for k, v in state.items():
        t = v.detach().cpu()
        ptr = t.untyped_storage().data_ptr() if t.numel() else -1
        out[k] = t.clone().contiguous() if ptr in seen else t.contiguous()
        seen.add(ptr)
    return out


def _load_checkpoint(directory: Path) -> dict[str, Any] | None:
    if not (directory / _CKPT_STATE).is_file():
        return None
    try:
        info = json.loads((directory / _CKPT_STATE).read_text())
        info["model"] = load_file(str(directory / _CKPT_MODEL))
        info["optimizer"] = _unflat_optimizer(load_file(str(directory / _CKPT_OPT)), info["optimizer"])
        info["best_state"] = (
            load_file(str(directory / _CKPT_BEST)) if (directory / _CKPT_BEST).is_file() else None
        )
        info["torch_rng"] = load_file(str(directory / _CKPT_RNG))["torch"]
    except Exception as e:
        raise ConfigError(f"cannot resume from {directory}: the checkpoint is unreadable ({e})") from None
    return info


def fit(
    model: nn.Module,
    loss_fn: Callable[[nn.Module, Any], torch.Tensor],
    batches: Callable[[int], Iterable[Any]],
    config: TrainConfig,
    *,
    evaluate: Callable[[nn.Module], float] | None = None,
    higher_is_better: bool = True,
    params: Sequence[nn.Parameter] | None = None,
    steps_per_epoch: int | None = None,
    after_step: Callable[[nn.Module, int], None] | None = None,
    progress: bool = True,
    desc: str = "fine-tune",
    checkpoint: Checkpointing | None = None,
) -> FitResult:
    """Train ``model`` in place.

    ``batches(epoch)`` yields the epoch's batches (shuffled by the caller with the epoch as
    seed, so runs are reproducible); ``loss_fn(model, batch)`` returns a scalar loss;
    ``evaluate(model)`` returns the validation metric used for early stopping. Only
    ``params`` are trained (default: all with ``requires_grad``). With ``checkpoint`` the
    state is saved every ``checkpoint.every`` steps, and a run that finds a checkpoint
    resumes from it (the epoch's batches already done are skipped), ending with the same
    weights as an uninterrupted run.
    """
    seed_everything(config.seed)
    trainable = [p for p in (params if params is not None else model.parameters()) if p.requires_grad]
    if not trainable:
        raise ConfigError("nothing to train: no parameter requires grad")
    decay = [p for p in trainable if p.dim() >= 2]
    no_decay = [p for p in trainable if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=config.lr,
    )
    if steps_per_epoch is None:
        steps_per_epoch = sum(1 for _ in batches(0))
    total = steps_per_epoch * config.epochs
    if config.max_steps is not None:
        total = min(total, config.max_steps)
    warmup = int(total * config.warmup_ratio)

    def lr_lambda(step: int) -> float:
        if step < warmup:
            return (step + 1) / max(1, warmup)
        return max(0.0, (total - step) / max(1, total - warmup))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda)
    history: list[dict[str, float]] = []
    best: tuple[float, int, dict[str, torch.Tensor]] | None = None
    bad_epochs = 0
    step = 0
    first_epoch, skip = 0, 0  # where a resumed run starts: epoch, batches of it already done
    running, count = 0.0, 0
    ckpt_dir = Path(checkpoint.directory) if checkpoint is not None else None
    if ckpt_dir is not None and checkpoint is not None and checkpoint.resume:
        saved = _load_checkpoint(ckpt_dir)
        if saved is not None:
            if saved.get("total") != total:
                raise ConfigError(
                    f"cannot resume from {ckpt_dir}: it was saved by a run of {saved.get('total')} steps, "
                    f"this run has {total} (a different configuration); delete it to start afresh"
                )
            result = model.load_state_dict(saved["model"], strict=False)
            if result.missing_keys or result.unexpected_keys:
                raise ConfigError(f"cannot resume from {ckpt_dir}: it holds another model's weights")
            opt.load_state_dict(saved["optimizer"])
            sched.load_state_dict(saved["scheduler"])
            step, first_epoch, skip = saved["step"], saved["epoch"], saved["position"]
            running, count = saved["running"], saved["count"]
            history, bad_epochs = saved["history"], saved["bad_epochs"]
            if saved["best_state"] is not None:
                best = (saved["best_metric"], saved["best_epoch"], saved["best_state"])
            torch.set_rng_state(saved["torch_rng"])
            ver, internal, gauss = saved["python_rng"]
            random.setstate((ver, tuple(internal), gauss))
            log.info("%s: resumed from %s at step %d (epoch %d)", desc, ckpt_dir, step, first_epoch + 1)

    def save_state(epoch: int, position: int) -> None:
        assert ckpt_dir is not None
        info = {
            "total": total,
            "step": step,
            "epoch": epoch,
            "position": position,
            "running": running,
            "count": count,
            "history": history,
            "bad_epochs": bad_epochs,
            "scheduler": sched.state_dict(),
            "best_metric": None if best is None else best[0],
            "best_epoch": None if best is None else best[1],
        }
        _save_checkpoint(ckpt_dir, model, opt, info, None if best is None else best[2])

    stop_reason = f"all {config.epochs} epochs run"
    start = time.perf_counter()
    bar = tqdm(total=total, initial=step, desc=desc, disable=not progress, unit="step", leave=False)
    try:
        for epoch in range(first_epoch, config.epochs):
            model.train()
            if epoch != first_epoch or skip == 0:
                running, count = 0.0, 0
            if epoch != first_epoch:
                skip = 0
            for position, batch in enumerate(batches(epoch)):
                if position < skip:  # done before the run was interrupted
                    continue
                if step >= total:
                    break
                loss = loss_fn(model, batch)
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"{desc}: loss became {loss.item()} at step {step}")
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if config.grad_clip:
                    torch.nn.utils.clip_grad_norm_(trainable, config.grad_clip)
                opt.step()
                sched.step()
                step += 1
                if after_step is not None:
                    after_step(model, step)
                running += loss.item()
                count += 1
                bar.update(1)
                bar.set_postfix(loss=f"{running / count:.4f}", epoch=epoch + 1)
                if checkpoint is not None and step % checkpoint.every == 0:
                    save_state(epoch, position + 1)
            entry = {"epoch": epoch + 1, "loss": running / max(1, count)}
            model.eval()
            if evaluate is not None:
                metric = float(evaluate(model))
                entry["metric"] = metric
                better = best is None or (metric > best[0] if higher_is_better else metric < best[0])
                if better:
                    best = (metric, epoch + 1, copy.deepcopy(model.state_dict()))
                    bad_epochs = 0
                else:
                    bad_epochs += 1
                log.info("%s epoch %d: loss %.4f, metric %.4f", desc, epoch + 1, entry["loss"], metric)
            history.append(entry)
            early = (
                config.patience is not None
                and bad_epochs > config.patience
                and (config.min_steps is None or step >= config.min_steps)
            )
            stop = step >= total or early
            if checkpoint is not None:
                # the next epoch starts at its first batch (or the run is complete)
                save_state(config.epochs if stop else epoch + 1, 0)
            if step >= total:
                capped = config.max_steps is not None and config.max_steps < steps_per_epoch * config.epochs
                stop_reason = f"step cap of {total} reached" if capped else f"all {config.epochs} epochs run"
                break
            if early:
                stop_reason = f"no better validation score for {bad_epochs} epochs"
                log.info("%s: early stop after epoch %d", desc, epoch + 1)
                break
    finally:
        bar.close()
    if best is not None and best[1] != len(history):
        model.load_state_dict(best[2])
    model.eval()
    return FitResult(
        steps=step,
        seconds=time.perf_counter() - start,
        history=history,
        best_metric=None if best is None else best[0],
        best_epoch=None if best is None else best[1],
        stop_reason=stop_reason,
    )
