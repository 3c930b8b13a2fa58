"""The per-machine choice (kernels/autotune.py): the fastest kernel that agrees with the
reference wins, a wrong one never does, the cache file survives corruption and concurrent
writers, and MODELPRESS_AUTOTUNE=0 falls back to priority order."""

from __future__ import annotations

import json
import logging
import multiprocessing as mp
import time

import pytest
import torch
import torch.nn.functional as F

from modelpress import kernels
from modelpress.formats import AffineQuantized
from modelpress.kernels import autotune, dispatch

_OP = "_test_autotune_op"


@pytest.fixture(autouse=True)
def _fresh(tmp_path, monkeypatch):
    monkeypatch.setenv("MODELPRESS_KERNEL_CACHE", str(tmp_path / "kc"))
    monkeypatch.delenv("MODELPRESS_KERNELS", raising=False)
    monkeypatch.delenv("MODELPRESS_AUTOTUNE", raising=False)
    autotune.clear_memory()
    yield
    dispatch.KERNELS.pop(_OP, None)
    autotune.clear_memory()


def _fmt(seed: int = 0) -> AffineQuantized:
    return AffineQuantized.encode(torch.randn(8, 16, generator=torch.Generator().manual_seed(seed)), 8)


def _ref(state, x, fmt):
    return F.linear(x, fmt.decode())


def _slow_ref(state, x, fmt):
    time.sleep(0.002)
    return F.linear(x, fmt.decode())


def _register(*specs):
    """(name, priority, fn) kernels for the throwaway op, plus its reference."""
    for name, priority, fn in specs:
        kernels.register_kernel(kernels.Kernel(name, _OP, ("affine",), fn, priority=priority, tolerance=1e-3))


def test_the_fastest_correct_kernel_wins_and_a_wrong_fast_one_is_rejected():
    def wrong_fast(state, x, fmt):
        return torch.zeros(x.shape[0], 8)

    def right_fast(state, x, fmt):
        return F.linear(x, fmt.decode())

    _register(("reference", -1000, _slow_ref), ("wrong", 10, wrong_fast), ("fast", 5, right_fast))
    fmt, x = _fmt(), torch.randn(3, 16)
    assert kernels.chosen(_OP, fmt, x).name == "wrong"  # priority order before any timing
    out = kernels.run(_OP, x, fmt)
    torch.testing.assert_close(out, F.linear(x, fmt.decode()))
    assert kernels.chosen(_OP, fmt, x).name == "fast"
    (rec,) = [r for k, r in autotune.records().items() if k.startswith(_OP)]
    assert rec["kernel"] == "fast" and "relative error" in rec["rejected"]["wrong"]
    assert rec["seconds"]["fast"] < rec["seconds"]["reference"]


def test_a_kernel_that_raises_is_rejected_not_fatal():
    def broken(state, x, fmt):
        raise RuntimeError("no such instruction here")

    _register(("reference", -1000, _ref), ("broken", 10, broken))
    fmt, x = _fmt(), torch.randn(2, 16)
    torch.testing.assert_close(kernels.run(_OP, x, fmt), F.linear(x, fmt.decode()))
    (rec,) = [r for k, r in autotune.records().items() if k.startswith(_OP)]
    assert rec["kernel"] == "reference" and "no such instruction" in rec["rejected"]["broken"]


def test_choices_are_per_row_bucket_and_reused_from_the_file():
    _register(("reference", -1000, _slow_ref), ("fast", 5, _ref))
    fmt = _fmt()
    kernels.run(_OP, torch.randn(1, 16), fmt)
    kernels.run(_OP, torch.randn(40, 16), fmt)
    kernels.run(_OP, torch.randn(50, 16), fmt)  # same bucket as 40: no new timing
    data = json.loads(autotune.cache_path().read_text())
    keys = [k for k in data["entries"] if k.startswith(_OP)]
    assert sorted(k.split("|")[5] for k in keys) == ["rows<=1", "rows<=64"]
    assert data["machine"]["torch"] == torch.__version__
    # a new process (here: memory forgotten) reads the choice instead of timing again
    autotune.clear_memory()
    calls = []

    def counting(state, x, fmt):
        calls.append(1)
        return F.linear(x, fmt.decode())

    dispatch.KERNELS[_OP] = [k for k in dispatch.KERNELS[_OP] if k.name != "fast"]
    kernels.register_kernel(kernels.Kernel("fast", _OP, ("affine",), counting, priority=5, tolerance=1e-3))
    kernels.run(_OP, torch.randn(1, 16), _fmt(1))
    assert len(calls) == 1  # run once, not timed


def test_a_corrupt_cache_file_is_rebuilt_with_a_warning(caplog):
    _register(("reference", -1000, _slow_ref), ("fast", 5, _ref))
    path = autotune.cache_path()
    path.parent.mkdir(parents=True)
    path.write_text('{"version": 1, "entries": {"x": ')  # torn
    autotune._warned.clear()
    with caplog.at_level(logging.WARNING, logger="modelpress.kernels.autotune"):
        kernels.run(_OP, torch.randn(2, 16), _fmt())
    assert "is corrupt" in caplog.text and "rebuilt" in caplog.text
    data = json.loads(path.read_text())
    assert any(k.startswith(_OP) for k in data["entries"])


def _writer(cache_dir: str, i: int) -> None:
    import os

    os.environ["MODELPRESS_KERNEL_CACHE"] = cache_dir
    from modelpress.kernels import autotune as at

    for j in range(20):
        at._persist(f"case-{i}-{j}", {"kernel": "reference", "seconds": {}, "rel_error": {}, "rejected": {}})


def test_concurrent_writers_lose_nothing(tmp_path):
    cache_dir = str(tmp_path / "shared")
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(cache_dir, i)) for i in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    files = list((tmp_path / "shared").glob("kernels-*.json"))
    assert len(files) == 1
    entries = json.loads(files[0].read_text())["entries"]
    assert {f"case-{i}-{j}" for i in range(3) for j in range(20)} <= set(entries)
    assert not list((tmp_path / "shared").glob(".*.tmp"))


def test_autotune_off_runs_the_highest_priority_candidate(monkeypatch):
    monkeypatch.setenv("MODELPRESS_AUTOTUNE", "0")
    seen = []

    def high(state, x, fmt):
        seen.append("high")
        return F.linear(x, fmt.decode())

    _register(("reference", -1000, _ref), ("high", 5, high))
    kernels.run(_OP, torch.randn(2, 16), _fmt())
    assert seen == ["high"] and not autotune.cache_path().exists()


def test_forcing_a_kernel_this_input_cannot_run_is_one_config_error():
    from modelpress.errors import ConfigError

    fmt = AffineQuantized.encode(torch.randn(15, 40), 4, symmetric=False, group_size=8)
    kernels.force("linear", "int4pack_bf16")
    try:
        with pytest.raises(ConfigError, match="kernel 'int4pack_bf16' \\(pinned for linear\\) cannot run"):
            kernels.linear(torch.randn(2, 40), fmt)
    finally:
        kernels.force("linear", None)


def test_an_unwritable_cache_dir_keeps_choices_in_memory(tmp_path, monkeypatch, caplog):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    monkeypatch.setenv("MODELPRESS_KERNEL_CACHE", str(blocker / "sub"))
    _register(("reference", -1000, _slow_ref), ("fast", 5, _ref))
    autotune._warned.clear()
    with caplog.at_level(logging.WARNING, logger="modelpress.kernels.autotune"):
        kernels.run(_OP, torch.randn(2, 16), _fmt())
    assert "cannot write the kernel cache" in caplog.text
    assert kernels.chosen(_OP, _fmt(), torch.randn(2, 16)).name == "fast"


def test_a_kernel_known_slow_here_is_not_timed_but_can_be_forced():
    calls = {"slow": 0}

    def slow(state, x, fmt):
        calls["slow"] += 1
        return F.linear(x, fmt.decode())

    _register(("reference", -1000, _slow_ref), ("fast", 5, _ref))
    kernels.register_kernel(
        kernels.Kernel(
            "slow",
            _OP,
            ("affine",),
            slow,
            priority=10,
            tolerance=1e-3,
            known_slow=lambda f, x: x.shape[0] > 4,
        )
    )
    fmt = _fmt()
    kernels.run(_OP, torch.randn(8, 16), fmt)
    assert calls["slow"] == 0 and kernels.chosen(_OP, fmt, torch.randn(8, 16)).name == "fast"
    rec = next(r for k, r in autotune.records().items() if k.startswith(_OP) and "rows<=16" in k)
    assert "not timed" in rec["rejected"]["slow"]
    kernels.run(_OP, torch.randn(2, 16), fmt)  # not known slow at 2 rows: timed
    assert calls["slow"] > 0
    kernels.force(_OP, "slow")
    try:
        n = calls["slow"]
        kernels.run(_OP, torch.randn(8, 16), fmt)
        assert calls["slow"] == n + 1
    finally:
        kernels.force(_OP, None)


def test_a_candidate_far_slower_at_its_first_call_is_not_timed_further(monkeypatch):
    calls = {"slow": 0}

    def slow(state, x, fmt):
        calls["slow"] += 1
        time.sleep(0.05)
        return F.linear(x, fmt.decode())

    monkeypatch.setattr(autotune, "_SLOWER_S", 0.01)
    _register(("reference", -1000, _ref), ("fast", 10, _ref), ("slow", 5, slow))
    kernels.run(_OP, torch.randn(3, 16), _fmt())
    (rec,) = [r for k, r in autotune.records().items() if k.startswith(_OP)]
    assert rec["kernel"] in ("fast", "reference") and calls["slow"] == 1
    assert rec["rejected"]["slow"].startswith("slower:")
