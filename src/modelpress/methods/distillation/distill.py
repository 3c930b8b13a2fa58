"""Knowledge distillation into a smaller student, through the one fine-tuning loop.

``DistillConfig`` (method ``distill``) builds a student from the teacher (``layer-drop``:
fewer transformer blocks, DistilBERT-style; ``narrow``: a fraction of the width) or takes
the model it is given (``input``: any user module, with ``compress(student, ...,
teacher=teacher)``), then trains it on the task data against the teacher with any mix of
the losses in ``losses.py``: soft targets (KL × T²) with hard-label cross-entropy,
hidden-state MSE (with a learned projection when widths differ), cosine on the last hidden
states, attention maps, relational distance/angle, self-distillation of early exits, and
mutual learning with a peer.

The teacher is the ``teacher`` passed to ``compress`` or else the model the step receives;
it runs in eval mode under ``no_grad`` with ``requires_grad`` off, and its logits are cached
by example when the data repeats (epochs) and only logits are needed. The step leaves the
teacher in the context, so a later ``distill`` step with ``student: input`` distils the
same teacher again (general-then-task distillation, TinyBERT's order).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import logging
import random
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any, cast

import torch
from torch import nn

from ...data.calibration import TaskData
from ...data.user import UserData
from ...errors import ConfigError
from ...models.blocks import block_list
from ...models.tasks import model_device
from ...training import Checkpointing, FitResult, TrainConfig, fit, grads_on
from ..base import (
    NON_NEGATIVE,
    POSITIVE,
    CompressContext,
    MethodConfig,
    between,
    one_of,
    param,
    register,
    register_config,
)
from .losses import (
    attention_loss,
    cosine_hidden_loss,
    hidden_mse_loss,
    kd_loss,
    rkd_angle_loss,
    rkd_distance_loss,
    self_distillation_loss,
    soft_kl,
)
from .students import default_kept_layers, layer_drop_student, narrow_student

if TYPE_CHECKING:
    from transformers import PreTrainedModel

__all__ = ["DistillConfig", "distill"]

log = logging.getLogger(__name__)

STUDENTS = ("layer-drop", "narrow", "input")
_NOT_INPUTS = ("labels", "index")


@register_config
@dataclasses.dataclass(frozen=True)
class DistillConfig(MethodConfig):
    """Distil the teacher into a student.

    student: ``layer-drop`` (keep the teacher's blocks ``layers``, default every other one
    ending with the last), ``narrow`` (``width`` × hidden size / heads / FFN), or ``input``
    (the model given to this step; the teacher comes from ``compress(..., teacher=)`` or an
    earlier ``distill`` step).
    Loss weights: ``alpha`` weighs the soft targets at ``temperature`` against hard-label
    cross-entropy (``1 - alpha``); ``hidden`` (MSE of hidden states, layer-mapped),
    ``cosine`` (last hidden state), ``attention`` (attention maps), ``relational``
    (RKD distance + 2 × angle on the first token's last hidden state, or the logits),
    ``self_distill`` (the last layer teaches early exits through the model's own head),
    ``mutual`` (train a peer copy alongside, each learning from the other).
    ``unlabeled``: ignore labels (pure KD on the inputs).
    Training: ``epochs`` / ``lr`` / ``batch_size`` default to the task's own schedule (at
    least 3 epochs); ``max_steps``, ``patience`` (epochs without validation gain before
    stopping; the best epoch is kept), ``seed``; ``checkpoint_dir`` / ``checkpoint_every``
    save the run so that an interrupted one resumes.
    """

    name = "distill"
    student: str = param("layer-drop", one_of(*STUDENTS))
    layers: tuple[int, ...] | None = None
    width: float = param(0.5, between(0, 1, lo_open=True, hi_open=True))
    temperature: float = param(2.0, POSITIVE)
    alpha: float = param(0.5, between(0, 1))  # weight of the soft targets
    hidden: float = param(0.0, NON_NEGATIVE)
    cosine: float = param(0.0, NON_NEGATIVE)
    attention: float = param(0.0, NON_NEGATIVE)
    relational: float = param(0.0, NON_NEGATIVE)
    self_distill: float = param(0.0, NON_NEGATIVE)
    mutual: bool = False
    unlabeled: bool = False
    epochs: int | None = param(None, POSITIVE)
    lr: float | None = param(None, POSITIVE)
    batch_size: int | None = param(None, POSITIVE)
    max_steps: int | None = param(None, POSITIVE)
    patience: int | None = param(None, NON_NEGATIVE)
    seed: int = param(0, NON_NEGATIVE)
    cache_teacher: bool = True
    checkpoint_dir: str | None = None
    checkpoint_every: int = param(200, POSITIVE)

    def validate(self) -> None:
        if self.layers is not None and self.student != "layer-drop":
            raise self.error("layers only applies to student: layer-drop")
        if self.unlabeled and self.alpha == 0 and not (self.needs_features or self.mutual):
            raise self.error("unlabeled data with alpha 0 and no feature loss leaves nothing to learn")

    @property
    def needs_features(self) -> bool:
        return bool(self.hidden or self.cosine or self.attention or self.relational)


# -- data ---------------------------------------------------------------------------------


class _Data:
    """Training batches and validation of ``ctx.data``: a task adapter (``batches``,
    ``score``), a user's batches (``UserData``: each batch goes to the models through its
    forward, wrapped as ``{_USER_BATCH: (data, batch), "labels": ...}``), or a list of
    model-ready batches (dicts of tensors)."""

    def __init__(self, data: Any, batch_size: int) -> None:
        if data is None:
            raise ConfigError(
                "distill needs training data: pass a task adapter or a list of model-ready batches as `data`"
            )
        self.adapter = data if isinstance(data, TaskData) else None
        self.user = data if isinstance(data, UserData) else None
        if self.adapter is None and self.user is None:
            if not isinstance(data, (list, tuple)) or not all(isinstance(b, dict) for b in data):
                raise ConfigError(
                    "distill: `data` must be a task adapter or a list of batches (dicts of tensors)"
                )
            if not data:
                raise ConfigError("distill: the list of training batches is empty")
            self.fixed: list[dict[str, torch.Tensor]] = list(data)
        self.batch_size = batch_size

    def batches(self, epoch: int, seed: int) -> Iterator[dict[str, torch.Tensor]]:
        if self.user is not None:
            batches: Iterable[Any] = self.user.batches("train", self.batch_size)
            if isinstance(self.user.data, (list, tuple)):  # in memory: a seeded shuffle per epoch, as before
                batches = list(batches)
                random.Random(seed + epoch).shuffle(batches)
            return (_user_batch(self.user, b) for b in batches)
        if self.adapter is not None:
            return iter(self.adapter.batches("train", self.batch_size, shuffle_seed=seed + epoch))
        order = list(range(len(self.fixed)))
        random.Random(seed + epoch).shuffle(order)
        return iter([self.fixed[i] for i in order])

    def first(self) -> dict[str, torch.Tensor]:
        for b in self.batches(0, 0):
            return b
        raise ConfigError("distill: the training data is empty")

    def steps(self) -> int:
        return sum(1 for _ in self.batches(0, 0))


#: the key of a wrapped user batch: ``(UserData, the batch as the user's data yields it)``
_USER_BATCH = "_modelpress_user_batch"


def _user_batch(data: UserData, batch: Any) -> dict[str, Any]:
    """A user's batch in the dict shape the losses read: the batch (run through the data's
    forward) and its integer labels where it has them (hard-label cross-entropy). A dict of
    tensors with the default forward is model-ready as it is (a transformers batch: hidden
    states and attentions can be distilled)."""
    if isinstance(batch, dict) and data.forward_fn is None:
        return batch
    out: dict[str, Any] = {_USER_BATCH: (data, batch)}
    labels = data.labels(batch)
    if labels is not None:
        out["labels"] = labels
    return out


def _task_schedule(adapter: Any) -> tuple[TrainConfig, int]:
    training = getattr(adapter, "training", None)
    train = getattr(training, "train", None)
    bs = getattr(training, "batch_size", None)
    return (train if isinstance(train, TrainConfig) else TrainConfig(lr=5e-5)), (
        bs if isinstance(bs, int) else 32
    )


# -- forward passes -----------------------------------------------------------------------


@dataclasses.dataclass
class _Out:
    logits: torch.Tensor
    hidden: tuple[torch.Tensor, ...] | None = None  # embeddings output + one per block
    attentions: tuple[torch.Tensor, ...] | None = None


def _is_hf(model: nn.Module) -> bool:
    return hasattr(model, "config") and hasattr(model.config, "to_dict")


def _forward(model: nn.Module, batch: dict[str, torch.Tensor], hidden: bool, attentions: bool) -> _Out:
    user = cast("tuple[UserData, Any] | None", batch.get(_USER_BATCH))
    if user is not None:  # a user's batch: the user's forward, logits only
        if hidden or attentions:
            raise ConfigError(
                "hidden-state / attention distillation reads transformers outputs; with your own batches "
                "distill compares logits (soft targets and labels) only"
            )
        logits = user[0].logits(model, user[1])
        if logits.dim() != 2:
            raise ConfigError(
                f"distill on your own batches compares (batch, classes) logits; the model gave "
                f"{list(logits.shape)} (pass forward_fn=(model, batch) -> logits)"
            )
        return _Out(logits)
    device = model_device(model)
    inputs = {k: v.to(device) for k, v in batch.items() if k not in _NOT_INPUTS}
    if not _is_hf(model):
        if hidden or attentions:
            raise ConfigError(
                "hidden-state / attention distillation needs a transformers model, "
                f"not {type(model).__name__}"
            )
        (x,) = inputs.values() if len(inputs) == 1 else (None,)
        if x is None:
            raise ConfigError(f"distill: cannot feed batch keys {sorted(inputs)} to {type(model).__name__}")
        return _Out(model(x))
    out = model(**inputs, output_hidden_states=hidden or None, output_attentions=attentions or None)
    return _Out(out.logits, out.hidden_states if hidden else None, out.attentions if attentions else None)


@contextlib.contextmanager
def _eager_attention(models: list[nn.Module], enabled: bool) -> Iterator[None]:
    """Attention probabilities are only returned by the eager implementation."""
    saved = []
    if enabled:
        for m in models:
            impl = getattr(m.config, "_attn_implementation", None)
            saved.append((m, impl))
            if impl != "eager":
                cast("PreTrainedModel", m).set_attn_implementation("eager")
    try:
        yield
    finally:
        for m, impl in saved:
            if impl is not None and impl != "eager":
                cast("PreTrainedModel", m).set_attn_implementation(impl)


@contextlib.contextmanager
def _frozen(teacher: nn.Module) -> Iterator[None]:
    """The teacher in eval mode with gradients off, both restored after."""
    mode = teacher.training
    teacher.eval()
    try:
        with grads_on(teacher.parameters(), on=False):
            yield
    finally:
        teacher.train(mode)


def _check_compatible(student: nn.Module, teacher: nn.Module, s_out: _Out, t_out: _Out) -> None:
    sv = getattr(getattr(student, "config", None), "vocab_size", None)
    tv = getattr(getattr(teacher, "config", None), "vocab_size", None)
    if sv is not None and tv is not None and sv != tv:
        raise ConfigError(
            f"teacher and student vocabularies differ ({tv} vs {sv} tokens): distillation compares "
            "their predictions on the same inputs, so they must share one tokenizer"
        )
    s, t = s_out.logits.shape[-1], t_out.logits.shape[-1]
    if s != t:
        what = "vocabulary entries" if s_out.logits.dim() == 3 else "labels"
        raise ConfigError(f"teacher predicts {t} {what}, student {s}: they must predict the same label set")
    sl = getattr(getattr(student, "config", None), "id2label", None)
    tl = getattr(getattr(teacher, "config", None), "id2label", None)
    if s_out.logits.dim() == 2 and sl and tl and dict(sl) != dict(tl):
        raise ConfigError(f"teacher labels {dict(tl)} differ from the student's {dict(sl)}")


def _layer_map(n_student: int, n_teacher: int, kept: tuple[int, ...] | None) -> list[int]:
    """Teacher hidden-state index for each student hidden-state index (0 = embeddings)."""
    if kept is not None and len(kept) == n_student:
        return [0] + [k + 1 for k in kept]
    return [0] + [max(1, round(i * n_teacher / n_student)) for i in range(1, n_student + 1)]


def _early_exits(student: nn.Module, hidden: tuple[torch.Tensor, ...]) -> list[torch.Tensor]:
    """Logits of every block but the last through the model's own pooler + classifier."""
    base = getattr(student, "base_model", None)
    pooler, classifier = getattr(base, "pooler", None), getattr(student, "classifier", None)
    if pooler is None or classifier is None:
        raise ConfigError(
            "self-distillation reads early exits through the model's pooler and classifier "
            f"(BERT-style sequence classifiers); {type(student).__name__} has none"
        )
    return [classifier(pooler(h)) for h in hidden[1:-1]]


# -- the loss -------------------------------------------------------------------------------


class _Objective:
    """The configured mix of losses for one batch; caches teacher logits by example."""

    def __init__(
        self,
        config: DistillConfig,
        student: nn.Module,
        teacher: nn.Module,
        kept: tuple[int, ...] | None,
        projection: nn.Module | None,
    ) -> None:
        self.config = config
        self.teacher = teacher
        self.kept = kept
        self.projection = projection
        self.cache: dict[int, torch.Tensor] = {}
        self.cache_hits = 0
        self.need_teacher = config.alpha > 0 or config.needs_features
        self.want_hidden = bool(config.hidden or config.cosine or config.relational or config.self_distill)
        self.want_attn = bool(config.attention)

    def teacher_out(self, batch: dict[str, torch.Tensor]) -> _Out:
        c = self.config
        cacheable = c.cache_teacher and not c.needs_features and "index" in batch
        if cacheable:
            idx = batch["index"].tolist()
            if all(i in self.cache for i in idx):
                self.cache_hits += 1
                return _Out(torch.stack([self.cache[i] for i in idx]).to(model_device(self.teacher)))
        with torch.no_grad():
            out = _forward(
                self.teacher, batch, c.hidden > 0 or c.cosine > 0 or c.relational > 0, self.want_attn
            )
        if cacheable and out.logits.dim() == 2:
            for i, row in zip(idx, out.logits.detach().cpu(), strict=True):
                self.cache[i] = row
        return out

    def student_loss(
        self, student: nn.Module, s: _Out, t: _Out | None, batch: dict[str, torch.Tensor]
    ) -> torch.Tensor:
        c = self.config
        logits, labels, mask = s.logits, None if c.unlabeled else batch.get("labels"), None
        t_logits = None if t is None else t.logits
        device = logits.device
        if labels is not None:
            labels = labels.to(device)
        if logits.dim() == 3:  # language model: predict token t+1 from tokens <= t
            ids = batch["input_ids"].to(device)
            attn = batch.get("attention_mask")
            mask = (attn[:, 1:] if attn is not None else torch.ones_like(ids[:, 1:])).to(device).bool()
            logits = logits[:, :-1]
            t_logits = None if t_logits is None else t_logits[:, :-1]
            labels = None if c.unlabeled else ids[:, 1:].masked_fill(~mask, -100)
        if t_logits is not None and c.alpha > 0:
            loss = kd_loss(logits, t_logits, labels, temperature=c.temperature, alpha=c.alpha, mask=mask)
        elif labels is not None:
            loss = kd_loss(logits, logits.detach(), labels, alpha=0.0, mask=mask)  # cross-entropy only
        else:
            loss = logits.new_zeros(())
        token_mask = batch.get("attention_mask")
        token_mask = None if token_mask is None else token_mask.to(device).bool()
        if c.hidden or c.cosine or c.attention:
            assert t is not None
        if c.hidden:
            assert s.hidden is not None and t is not None and t.hidden is not None
            mapping = _layer_map(len(s.hidden) - 1, len(t.hidden) - 1, self.kept)
            terms = [
                hidden_mse_loss(s.hidden[i], t.hidden[j], self.projection, token_mask)
                for i, j in enumerate(mapping)
            ]
            loss = loss + c.hidden * torch.stack(terms).mean()
        if c.cosine:
            assert s.hidden is not None and t is not None and t.hidden is not None
            sh = s.hidden[-1] if self.projection is None else self.projection(s.hidden[-1])
            loss = loss + c.cosine * cosine_hidden_loss(sh, t.hidden[-1], token_mask)
        if c.attention:
            assert s.attentions is not None and t is not None and t.attentions is not None
            mapping = _layer_map(len(s.attentions), len(t.attentions), self.kept)[1:]
            terms = [
                attention_loss(a, t.attentions[j - 1], token_mask)
                for a, j in zip(s.attentions, mapping, strict=True)
            ]
            loss = loss + c.attention * torch.stack(terms).mean()
        if c.relational:
            assert t is not None
            se = s.logits if s.hidden is None else s.hidden[-1][:, 0]
            te = t.logits if t.hidden is None else t.hidden[-1][:, 0]
            if se.dim() == 3:
                se, te = se.mean(1), te.mean(1)
            loss = loss + c.relational * (rkd_distance_loss(se, te) + 2.0 * rkd_angle_loss(se, te))
        if c.self_distill:
            assert s.hidden is not None
            exits = _early_exits(student, s.hidden)
            if exits:
                loss = loss + c.self_distill * self_distillation_loss(exits, s.logits, c.temperature)
        return loss

    def __call__(self, trainee: nn.ModuleDict, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        t = self.teacher_out(batch) if self.need_teacher else None
        student = trainee["student"]
        s = _forward(student, batch, self.want_hidden, self.want_attn)
        loss = self.student_loss(student, s, t, batch)
        if "peer" in trainee:  # deep mutual learning: each peer also learns from the other
            peer = trainee["peer"]
            p = _forward(peer, batch, self.want_hidden, self.want_attn)
            mask = None
            s_logits, p_logits = s.logits, p.logits
            if s_logits.dim() == 3:
                s_logits, p_logits = s_logits[:, :-1], p_logits[:, :-1]
                attn = batch.get("attention_mask")
                mask = None if attn is None else attn[:, 1:].to(s_logits.device).bool()
            loss = (
                loss
                + self.student_loss(peer, p, t, batch)
                + soft_kl(s_logits, p_logits.detach(), 1.0, mask)
                + soft_kl(p_logits, s_logits.detach(), 1.0, mask)
            )
        return loss


# -- the method ---------------------------------------------------------------------------


def _student_of(
    model: nn.Module, teacher: nn.Module, config: DistillConfig
) -> tuple[nn.Module, tuple[int, ...] | None]:
    if config.student == "layer-drop":
        n = len(block_list(teacher, "distill (student: layer-drop)")[1])
        kept = config.layers if config.layers is not None else default_kept_layers(n)
        return layer_drop_student(teacher, kept), tuple(kept)
    if config.student == "narrow":
        return narrow_student(teacher, config.width), None
    return model, None


def _width(model: nn.Module) -> int | None:
    return getattr(getattr(model, "config", None), "hidden_size", None)


def distill(
    student: nn.Module,
    teacher: nn.Module,
    data: Any,
    config: DistillConfig,
    *,
    kept: tuple[int, ...] | None = None,
    progress: bool = True,
) -> FitResult:
    """Train ``student`` in place against ``teacher`` on ``data`` (a task adapter or a list of
    batches) with the losses of ``config``. Returns the fit's result (steps, time, history)."""
    task_train, task_bs = _task_schedule(data)
    src = _Data(data, config.batch_size or task_bs)
    seed = config.seed
    train_cfg = dataclasses.replace(
        task_train,
        epochs=config.epochs or max(3, task_train.epochs),
        lr=config.lr or task_train.lr,
        max_steps=config.max_steps,
        patience=config.patience,
        seed=seed,
    )
    device = model_device(teacher)
    student.to(device)
    trainee = nn.ModuleDict({"student": student})
    projection = None
    sw, tw = _width(student), _width(teacher)
    if (config.hidden or config.cosine) and sw is not None and tw is not None and sw != tw:
        torch.manual_seed(seed)
        projection = nn.Linear(sw, tw).to(device)  # learned, discarded after training
        trainee["projection"] = projection
    if config.mutual:
        trainee["peer"] = copy.deepcopy(student)
    objective = _Objective(config, student, teacher, kept, projection)
    adapter = src.adapter
    evaluate: Callable[[nn.Module], float] | None = None
    if adapter is not None:
        evaluate = lambda m: adapter.score(cast(nn.ModuleDict, m)["student"], "validation")  # noqa: E731
    checkpoint = (
        Checkpointing(config.checkpoint_dir, config.checkpoint_every) if config.checkpoint_dir else None
    )
    with (
        grads_on(trainee.parameters()),
        _frozen(teacher),
        _eager_attention(
            [student, teacher, *([trainee["peer"]] if config.mutual else [])], config.attention > 0
        ),
    ):
        first = src.first()
        with torch.no_grad():
            _check_compatible(
                student,
                teacher,
                _forward(student.eval(), first, False, False),
                _forward(teacher, first, False, False),
            )
        result = fit(
            trainee,
            # fit calls the loss with the model it trains: ``trainee``, a ModuleDict
            cast("Callable[[nn.Module, Any], torch.Tensor]", objective),
            lambda epoch: src.batches(epoch, seed),
            train_cfg,
            evaluate=evaluate,
            higher_is_better=bool(getattr(adapter, "higher_is_better", True)),
            steps_per_epoch=src.steps(),
            progress=progress,
            desc="distill",
            checkpoint=checkpoint,
        )
    log.info(
        "distill: %d steps in %.0f s (teacher logits reused from cache on %d batches): %s",
        result.steps,
        result.seconds,
        objective.cache_hits,
        result.history,
    )
    return result


@register(DistillConfig)
def _distill(model: nn.Module, config: DistillConfig, ctx: CompressContext) -> nn.Module:
    if config.student == "input" and ctx.teacher is None:
        raise ConfigError(
            "distill with student: input trains the given model against a teacher: pass teacher= to "
            "compress, or put a distill step that builds a student before this one"
        )
    _Data(ctx.data, 1)  # fail on missing data before building anything
    teacher = ctx.teacher if ctx.teacher is not None else model
    student, kept = _student_of(model, teacher, config)
    t0 = time.perf_counter()
    result = distill(student, teacher, ctx.data, config, kept=kept, progress=ctx.progress)
    n_t = sum(p.numel() for p in teacher.parameters())
    n_s = sum(p.numel() for p in student.parameters())
    log.info(
        "distill: %s student of %.2fM parameters (%.0f%% of the teacher's), %d steps in %.0f s",
        config.student,
        n_s / 1e6,
        100 * n_s / n_t,
        result.steps,
        time.perf_counter() - t0,
    )
    ctx.teacher = teacher  # a later distill step (student: input) reuses this teacher
    return student.eval()
