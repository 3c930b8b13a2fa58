"""The C++ kernels (kernels/ext.py, kernels/csrc/fused_cpu.cpp): bitwise the eager kernels'
output, candidates only where built, and a broken or disabled build leaves the others running."""

from __future__ import annotations

import importlib.machinery
import shutil

import pytest
import torch

from modelpress import kernels
from modelpress.formats import AffineQuantized, Codebook
from modelpress.kernels import dispatch, ext
from modelpress.kernels.int8 import _linear_a8, _linear_requant, _requant

_HAVE_TOOLS = shutil.which("g++") is not None or shutil.which("c++") is not None

needs_ext = pytest.mark.skipif(not ext.available(), reason=f"C++ kernels: {ext.status()}")


def test_the_extension_is_built_where_a_compiler_is_found():
    # make setup builds it; CI has g++ — so a missing build here is a defect, not a skip
    if not _HAVE_TOOLS:
        pytest.skip("no C++ compiler on this machine")
    assert ext.available(), ext.status()
    assert ext.status().startswith("loaded")


def _w(rows: int, cols: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(rows, cols, generator=torch.Generator().manual_seed(seed))


@needs_ext
@pytest.mark.parametrize("rows", [1, 3, 17, 70])
@pytest.mark.parametrize("shape", [(5, 7), (96, 40), (33, 129), (1000, 64)])  # (1000, 64): a tied LM head
@pytest.mark.parametrize("with_bias", [False, True])
def test_fused_linear_a8_is_bitwise_the_eager_kernel(rows, shape, with_bias):
    fmt = AffineQuantized.encode(_w(*shape), 8)
    x = torch.randn(rows, shape[1], generator=torch.Generator().manual_seed(1)) * 3
    x[0, 0] = 0.0  # zeros, ties and an all-zero row take the same rounding
    if rows > 2:
        x[2] = 0.0
    b = torch.randn(shape[0]) if with_bias else None
    want = _linear_a8(None, x, fmt, b)
    got = dispatch._by_name("linear_a8", "int_mm_fused").run(
        dispatch._by_name("linear_a8", "int_mm_fused").prepare(fmt), x, fmt, bias=b
    )
    assert got.dtype == torch.float32 and torch.equal(got, want)


@needs_ext
@pytest.mark.parametrize(
    "fmt",
    [
        AffineQuantized.encode(_w(24, 96), 4, symmetric=False, group_size=32),
        Codebook.from_codes(
            (24, 96),
            torch.randint(0, 8, (24 * 96,), generator=torch.Generator().manual_seed(3), dtype=torch.uint8),
            torch.randn(24, 8),
            bits=3,
            granularity="channel",
        ),
    ],
    ids=["int4-g32", "codebook-3bit"],
)
def test_fused_requant_is_bitwise_the_eager_requant_kernel(fmt):
    k = dispatch._by_name("linear", "int_mm_requant_fused")
    for x in (torch.randn(1, 96), torch.randn(2, 5, 96)):  # leading dims are kept
        want = _linear_requant(_requant(fmt), x, fmt, torch.ones(24))
        got = k.run(k.prepare(fmt), x, fmt, bias=torch.ones(24))
        assert got.shape == (*x.shape[:-1], 24) and torch.equal(got, want)


@needs_ext
def test_fused_kernels_are_candidates_and_the_dispatcher_runs_them():
    fmt = AffineQuantized.encode(_w(12, 40), 8)
    x = torch.randn(1, 40)
    assert "int_mm_fused" in [k.name for k in kernels.candidates("linear_a8", fmt, x)]
    kernels.force("linear_a8", "int_mm_fused")
    try:
        assert torch.equal(kernels.linear_a8(x, fmt), _linear_a8(None, x, fmt))
    finally:
        kernels.force("linear_a8", None)
    # not for inputs it does not take: bf16 activations
    assert "int_mm_fused" not in [k.name for k in kernels.candidates("linear_a8", fmt, x.bfloat16())]


@needs_ext
def test_fused_kernel_checks_its_inputs():
    mod = ext.load()
    with pytest.raises(RuntimeError, match="x must be a contiguous"):
        mod.linear_a8(
            torch.randn(2, 4, dtype=torch.float64), torch.zeros(3, 4, dtype=torch.int8), torch.ones(3), None
        )
    with pytest.raises(RuntimeError, match="wscale"):
        mod.linear_a8(torch.randn(2, 4), torch.zeros(3, 4, dtype=torch.int8), torch.ones(2), None)


@pytest.fixture
def fresh_ext(monkeypatch, tmp_path):
    """The load attempt forgotten before and after (and the build dir a temp one)."""
    monkeypatch.setenv("MODELPRESS_EXT_DIR", str(tmp_path / "ext"))
    ext._reset()
    yield tmp_path / "ext"
    ext._reset()
    monkeypatch.undo()
    ext.load()  # back to the machine's build for the other tests
    dispatch._forced.clear()


def test_disabled_by_the_environment(monkeypatch, fresh_ext):
    monkeypatch.setenv("MODELPRESS_EXT", "0")
    assert not ext.available()
    assert ext.status() == "not available: disabled by MODELPRESS_EXT=0"
    fmt = AffineQuantized.encode(_w(12, 40), 8)
    assert "int_mm_fused" not in [k.name for k in kernels.candidates("linear_a8", fmt, torch.randn(1, 40))]


def test_a_corrupt_library_is_reported_and_the_other_kernels_run(fresh_ext, caplog):
    lib = ext.build_dir() / f"{ext._name()}{importlib.machinery.EXTENSION_SUFFIXES[0]}"
    lib.parent.mkdir(parents=True)
    lib.write_bytes(b"not a shared library")
    assert ext.load() is None
    assert "not available" in ext.status() and "ImportError" in ext.status()
    assert "C++ kernels are not available" in caplog.text
    fmt = AffineQuantized.encode(_w(12, 40), 8)
    x = torch.randn(1, 40)
    assert torch.equal(kernels.linear_a8(x, fmt), kernels.linear_a8(x, fmt))  # still runs


def test_the_build_dir_depends_on_the_flags(monkeypatch, fresh_ext):
    a = ext.build_dir()
    monkeypatch.setattr(ext, "CFLAGS", ("-O2",))
    assert ext.build_dir() != a  # a build with other flags never loads this one's library
