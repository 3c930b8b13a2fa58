"""save never destroys what it did not write, is atomic under kill -9, and cleans up after
an interrupted save; compress honours device and hands notes to its caller."""

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch
from torch import nn

import modelpress as mp
from modelpress.api import recover_interrupted_save


def _net() -> nn.Module:
    from modelpress.models.lenet import LeNet300100

    torch.manual_seed(0)
    return LeNet300100(hidden=(8, 4))


@pytest.fixture
def lenet():
    from modelpress.models.lenet import LeNet300100

    torch.manual_seed(0)
    return LeNet300100()


def test_refuses_a_directory_with_a_manifest_and_other_files(tmp_path, lenet):
    """The review's reproduction: a web project with a stray manifest.json lost its files."""
    w = tmp_path / "w"
    (w / "src").mkdir(parents=True)
    (w / "manifest.json").write_text("{}")
    (w / "index.html").write_text("x")
    (w / "src" / "app.js").write_text("y")
    with pytest.raises(mp.ModelpressError, match="not a modelpress artifact"):
        mp.save(lenet, w)
    assert (w / "index.html").read_text() == "x" and (w / "src" / "app.js").read_text() == "y"


def test_refuses_an_artifact_that_holds_user_files(tmp_path, lenet):
    path = mp.save(lenet, tmp_path / "a")
    (path / "notes.txt").write_text("mine")
    with pytest.raises(mp.ModelpressError, match=r"also holds files modelpress did not write \(notes.txt\)"):
        mp.save(lenet, path)
    assert (path / "notes.txt").read_text() == "mine"
    (tmp_path / "f").write_text("a file")
    with pytest.raises(mp.ModelpressError, match="not a directory"):
        mp.save(lenet, tmp_path / "f")


def test_replaces_an_artifact_and_writes_into_an_empty_dir(tmp_path, lenet):
    (tmp_path / "e").mkdir()
    path = mp.save(lenet, tmp_path / "e")
    (path / "tokenizer").mkdir()  # what `modelpress compress` adds is part of the artifact
    q = mp.compress(lenet, "int8-dynamic")
    mp.save(q, path)
    assert json.loads((path / "manifest.json").read_text())["recipe"][0]["method"] == "int8-dynamic"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e"]  # no leftovers
    assert oct((path / "model.safetensors").stat().st_mode & 0o777) == oct(0o644)
    assert oct((path / "manifest.json").stat().st_mode & 0o777) == oct(0o644)


def test_same_model_saves_byte_identical(tmp_path, lenet):
    q = mp.compress(lenet, "int4-g128")
    a, b = mp.save(q, tmp_path / "a"), mp.save(q, tmp_path / "b")
    for f in ("model.safetensors", "manifest.json"):
        assert (a / f).read_bytes() == (b / f).read_bytes()


def test_recovers_a_parked_artifact_and_removes_dead_temporaries(tmp_path, lenet):
    path = mp.save(lenet, tmp_path / "a")
    dead = 2**22 + 12345  # above pid_max on Linux: never a live process
    parked = tmp_path / f".a.old-{dead}-beef"
    path.rename(parked)  # a kill between the two renames of the fallback swap
    (tmp_path / f".a.tmp-{dead}-cafe").mkdir()
    done = recover_interrupted_save(path)
    assert len(done) == 2 and path.is_dir() and sorted(p.name for p in tmp_path.iterdir()) == ["a"]
    assert isinstance(mp.load(path), nn.Module)


_SAVER = textwrap.dedent(
    """
    import sys, torch
    import modelpress as mp
    from modelpress.models.lenet import LeNet300100
    torch.manual_seed(0)
    a, b = LeNet300100(), LeNet300100(hidden=(200, 50))
    mp.save(b, sys.argv[1])  # imports what saving needs: the kills below land in saves
    print("ready", flush=True)
    i = 0
    while True:
        mp.save(a if i % 2 else b, sys.argv[1])
        i += 1
    """
)


def test_kill_9_during_save_leaves_a_complete_artifact(tmp_path):
    """A few random kills here (the benchmark script does many): after each, the path holds
    one complete artifact (the old or the new one), and the next save leaves no leftovers."""
    path = tmp_path / "art"
    mp.save(_net(), path)
    rng = random.Random(0)
    for _ in range(6):
        p = subprocess.Popen([sys.executable, "-c", _SAVER, str(path)], stdout=subprocess.PIPE)
        assert p.stdout is not None and p.stdout.readline().strip() == b"ready"
        time.sleep(rng.uniform(0.0, 0.3))
        os.kill(p.pid, signal.SIGKILL)
        p.wait(timeout=30)
        m = mp.load(path)  # complete: loads, and is one of the two models
        assert m.fc1.weight.shape[0] in (300, 200, 8)
    mp.save(_net(), path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["art"]


def test_compress_notes_reach_the_caller_and_device_is_checked(lenet):
    q = mp.compress(lenet, mp.CONFIGS.get("kmeans")(bits=8, granularity="channel"))
    # fc3's rows hold 100 weights, fewer than 256 clusters: left as it is, and said so
    assert mp.compression_notes(q) == ["kmeans: fc3 left uncompressed: 100 weights per codebook < k = 256"]
    assert mp.compression_notes(mp.compress(q, "fp16")) == mp.compression_notes(q)  # kept along a recipe
    assert mp.compression_notes(lenet) == []
    with pytest.raises(mp.ConfigError, match="unknown device 'nope'"):
        mp.compress(lenet, "fp16", device="nope")
    if not torch.cuda.is_available():
        with pytest.raises(mp.ConfigError, match="no CUDA device"):
            mp.compress(lenet, "fp16", device="cuda")
    q = mp.compress(lenet, "fp16", device="cpu")
    assert next(q.parameters()).device.type == "cpu"
