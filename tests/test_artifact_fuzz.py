"""A short run of the artifact fuzzer (``benchmarks/artifact_fuzz.py`` runs >= 10,000 cases
and the kill -9 trials): artifacts of every format family, seeded mutations; each case loads
with outputs identical to the original or raises ``ArtifactError``, never another exception,
a hang or different outputs (edits that record the manifest's digest again may load as
another valid model, but never fail later than load)."""

from __future__ import annotations

import importlib.util
import sys
import time
from pathlib import Path

import pytest

_ENGINE = Path(__file__).resolve().parents[1] / "benchmarks" / "artifact_fuzz.py"

# bounded: about a minute on a busy two-core machine (building the artifacts included)
CASES = 1500
SEED = 14
BUDGET_S = 240


@pytest.fixture(scope="module")
def engine():
    spec = importlib.util.spec_from_file_location("modelpress_artifact_fuzz", _ENGINE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def families(engine, tmp_path_factory):
    return engine.build_families(tmp_path_factory.mktemp("fuzz"))


def test_every_format_family_is_fuzzed(engine, families):
    names = {f.name for f in families}
    assert {"affine-int8", "affine-int4", "codebook-packed", "codebook-zstd-mask", "pq"} <= names
    assert {"sparse-bitmask", "sparse-relative", "fp16", "structured", "codebook-conv"} <= names
    assert {"binary-group", "binary-xnor", "ternary-base3", "ternary-2bit-tensor", "lowrank"} <= names


def test_fuzzed_artifacts_load_identically_or_raise_artifact_error(engine, families, tmp_path):
    t0 = time.perf_counter()
    report = engine.fuzz(families, tmp_path, CASES, SEED, timeout=30.0)
    elapsed = time.perf_counter() - t0
    counts = dict(report.counts)
    assert not report.failures, "\n".join(report.failures[:20])
    assert sum(counts.values()) == CASES
    # both modes ran, and most mutations are caught (not a fuzzer that mutates nothing)
    assert counts.get("raw/refused", 0) > CASES // 3 and counts.get("sealed/refused", 0) > CASES // 6
    assert elapsed < BUDGET_S, f"{CASES} cases took {elapsed:.0f} s"
