import pytest
import torch
from torch import nn

from modelpress.errors import ConfigError
from modelpress.training import TrainConfig, fit


def _problem():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 4, generator=g)
    y = (x @ torch.tensor([1.0, -2.0, 0.5, 0.0]) > 0).long()
    batches = lambda epoch: [(x[i : i + 16], y[i : i + 16]) for i in range(0, 64, 16)]  # noqa: E731
    loss = lambda m, b: nn.functional.cross_entropy(m(b[0]), b[1])  # noqa: E731
    return x, y, batches, loss


def test_fit_learns_and_is_reproducible():
    x, y, batches, loss = _problem()
    runs = []
    for _ in range(2):
        torch.manual_seed(0)
        model = nn.Linear(4, 2)
        res = fit(model, loss, batches, TrainConfig(epochs=5, lr=0.1, patience=None), progress=False)
        runs.append(model.weight.detach().clone())
        assert res.steps == 20 and len(res.history) == 5
    assert torch.equal(runs[0], runs[1])
    assert (model(x).argmax(-1) == y).float().mean() > 0.9


def test_early_stop_restores_best_epoch():
    _, _, batches, loss = _problem()
    torch.manual_seed(0)
    model = nn.Linear(4, 2)
    scores = iter([0.5, 0.9, 0.6, 0.4, 0.3])
    snapshots = []

    def evaluate(m):
        snapshots.append(m.weight.detach().clone())
        return next(scores)

    res = fit(
        model, loss, batches, TrainConfig(epochs=5, lr=0.1, patience=1), evaluate=evaluate, progress=False
    )
    assert res.best_epoch == 2 and len(res.history) == 4  # stopped after 2 epochs without gain
    assert torch.equal(model.weight, snapshots[1])


def test_after_step_hook_and_param_subset():
    _, _, batches, loss = _problem()
    model = nn.Linear(4, 2)
    bias0 = model.bias.detach().clone()
    calls = []
    fit(
        model,
        loss,
        batches,
        TrainConfig(epochs=1, lr=0.1),
        params=[model.weight],
        after_step=lambda m, s: calls.append(s),
        progress=False,
    )
    assert calls == [1, 2, 3, 4] and torch.equal(model.bias, bias0)


def test_bad_train_config():
    with pytest.raises(ConfigError, match="epochs"):
        TrainConfig(epochs=0)
    with pytest.raises(ConfigError, match="nothing to train"):
        fit(
            nn.Linear(2, 2).requires_grad_(False),
            lambda m, b: m(b).sum(),
            lambda e: [torch.ones(1, 2)],
            TrainConfig(),
            progress=False,
        )


class _Interrupted(Exception):
    pass


def test_resume_from_checkpoint_reproduces_the_uninterrupted_run(tmp_path):
    from modelpress.training import Checkpointing

    g = torch.Generator().manual_seed(1)
    x = torch.randn(96, 6, generator=g)
    y = (x[:, 0] - x[:, 1] > 0).long()

    def batches(epoch):
        order = torch.randperm(96, generator=torch.Generator().manual_seed(epoch))
        return [(x[order[i : i + 16]], y[order[i : i + 16]]) for i in range(0, 96, 16)]

    def make():
        torch.manual_seed(0)
        # dropout draws from the global RNG: the checkpoint must restore it
        return nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Dropout(0.3), nn.Linear(16, 2))

    loss = lambda m, b: nn.functional.cross_entropy(m(b[0]), b[1])  # noqa: E731
    evaluate = lambda m: (m(x).argmax(-1) == y).float().mean().item()  # noqa: E731
    cfg = TrainConfig(epochs=3, lr=0.05, patience=None)

    ref = make()
    ref_res = fit(ref, loss, batches, cfg, evaluate=evaluate, progress=False)

    ck = Checkpointing(tmp_path / "ckpt", every=4)
    model = make()

    def boom(m, step):
        if step == 9:  # mid-epoch (6 batches per epoch), one step after the checkpoint at 8
            raise _Interrupted

    with pytest.raises(_Interrupted):
        fit(model, loss, batches, cfg, evaluate=evaluate, progress=False, checkpoint=ck, after_step=boom)
    assert (tmp_path / "ckpt" / "state.json").is_file()
    model = make()  # a fresh process would start from the initial weights again
    res = fit(model, loss, batches, cfg, evaluate=evaluate, progress=False, checkpoint=ck)
    for a, b in zip(ref.state_dict().values(), model.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert res.steps == ref_res.steps == 18
    assert [h["metric"] for h in res.history] == [h["metric"] for h in ref_res.history]
    assert res.history[0]["loss"] == pytest.approx(ref_res.history[0]["loss"])


def test_resume_refuses_a_checkpoint_of_another_run(tmp_path):
    from modelpress.training import Checkpointing

    _, _, batches, loss = _problem()
    ck = Checkpointing(tmp_path / "ckpt", every=2)
    fit(nn.Linear(4, 2), loss, batches, TrainConfig(epochs=1, lr=0.1), progress=False, checkpoint=ck)
    with pytest.raises(ConfigError, match="different configuration"):
        fit(nn.Linear(4, 2), loss, batches, TrainConfig(epochs=2, lr=0.1), progress=False, checkpoint=ck)


def test_min_steps_holds_early_stopping_back_and_the_reason_is_said():
    _, _, batches, loss = _problem()  # 4 steps an epoch
    flat = lambda m: 0.5  # noqa: E731  a validation score that never improves
    cfg = TrainConfig(epochs=10, lr=0.1, patience=0, min_steps=14)
    res = fit(nn.Linear(4, 2), loss, batches, cfg, evaluate=flat, progress=False)
    assert res.steps == 16 and len(res.history) == 4 and res.best_epoch == 1  # first epoch end >= 14
    assert res.stop_reason == "no better validation score for 3 epochs"
    assert "4 epochs (16 steps)" in res.summary("validation accuracy") and "kept epoch 1" in res.summary()
    res = fit(
        nn.Linear(4, 2),
        loss,
        batches,
        TrainConfig(epochs=10, lr=0.1, patience=0),
        evaluate=flat,
        progress=False,
    )
    assert res.steps == 8  # without min_steps: the second epoch without gain stops it
    res = fit(nn.Linear(4, 2), loss, batches, TrainConfig(epochs=3, lr=0.1, patience=None), progress=False)
    assert res.stop_reason == "all 3 epochs run"
    res = fit(
        nn.Linear(4, 2), loss, batches, TrainConfig(epochs=3, max_steps=6, patience=None), progress=False
    )
    assert res.steps == 6 and res.stop_reason == "step cap of 6 reached"
    with pytest.raises(ConfigError, match="min_steps"):
        TrainConfig(min_steps=-1)


def test_data_sized_schedule_plans_small_middle_and_large_splits():
    from modelpress.training.loop import DataSizedSchedule, config_key

    base = TrainConfig(epochs=1, lr=5e-5, patience=None)
    sched = DataSizedSchedule(target_steps=256, max_steps=3000)
    # the CSV: 497 examples at batch 32 = 16 steps an epoch
    small, why = sched.plan(base, 16)
    assert (small.epochs, small.min_steps, small.patience) == (16, 128, 4) and "small" in why
    # Rotten Tomatoes (299 steps): unchanged, and its cache key is the one of the old fields
    same, why = sched.plan(base, 299)
    assert same is base and why is None
    assert config_key(same) == {
        k: v for k, v in {**base.__dict__}.items() if k != "min_steps"
    } and "min_steps" not in config_key(same)
    assert config_key(small)["min_steps"] == 128
    large, why = sched.plan(base, 10_000)
    assert large.max_steps == 3000 and large.epochs == 1 and "capped" in why
    with pytest.raises(ConfigError):
        DataSizedSchedule(target_steps=10, max_steps=5)
