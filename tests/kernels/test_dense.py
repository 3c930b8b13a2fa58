"""The ``dense`` fallback: a decoded copy, only where no fast kernel passes, within a
memory cap, released with the format's prepared copies."""

import gc

import torch
import torch.nn.functional as F

from modelpress import kernels
from modelpress.formats.codebook import Codebook
from modelpress.kernels import autotune, dense
from modelpress.kernels.dispatch import KERNELS


def _codebook(rows: int = 48, cols: int = 40) -> Codebook:
    g = torch.Generator().manual_seed(0)
    codes = torch.randint(0, 4, (rows * cols,), generator=g, dtype=torch.uint8)
    return Codebook.from_codes(
        (rows, cols), codes, torch.randn(1, 4, generator=g), bits=2, granularity="tensor"
    )


def test_dense_is_exact_and_its_bytes_are_counted_and_released(monkeypatch):
    fmt = _codebook()
    x = torch.randn(5, 40)
    k = next(k for k in KERNELS["linear_a8"] if k.name == "dense")
    assert k.fallback and k.accepts(fmt, x)
    before = dense.dense_bytes()
    st = kernels.dispatch._state(k, fmt)
    assert dense.dense_bytes() == before + 4 * fmt.numel()
    assert torch.equal(k.run(st, x, fmt), F.linear(x, fmt.decode()))
    del st
    fmt.invalidate()
    gc.collect()
    assert dense.dense_bytes() == before


def test_dense_respects_its_memory_cap(monkeypatch):
    fmt, x = _codebook(), torch.randn(5, 40)
    monkeypatch.setenv("MODELPRESS_DENSE_MB", "0")
    assert "dense" not in {k.name for k in kernels.candidates("linear_a8", fmt, x)}
    monkeypatch.setenv("MODELPRESS_DENSE_MB", "1")
    assert "dense" in {k.name for k in kernels.candidates("linear_a8", fmt, x)}


def test_fallback_is_timed_only_where_no_other_kernel_passes():
    fmt, x = _codebook(), torch.randn(5, 40)
    ks = kernels.candidates("linear", fmt, x)
    rec = autotune._measure("linear", fmt, x, {}, ks, kernels.dispatch._state)
    others = [n for n in rec["seconds"] if n not in ("reference", "dense")]
    if others:  # a fast kernel passed: the decoded copy was not even tried
        assert "dense" not in rec["seconds"]
    else:
        assert "dense" in rec["seconds"]
    # where only the reference and the fallback run (linear_a8 of a codebook), it is timed
    ks = kernels.candidates("linear_a8", fmt, x)
    rec = autotune._measure("linear_a8", fmt, x, {}, ks, kernels.dispatch._state)
    assert set(rec["seconds"]) == {"dense", "reference"}
