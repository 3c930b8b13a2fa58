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


needs_avx2 = pytest.mark.skipif(
    not (ext.available() and ext.load().has_avx2()), reason="the AVX2 kernels need a CPU with AVX2"
)


@needs_avx2
@pytest.mark.parametrize("rows", [1, 2, 3, 17, 64])
@pytest.mark.parametrize("shape", [(5, 7), (96, 40), (33, 129), (1000, 64), (7, 1536)])
@pytest.mark.parametrize("with_bias", [False, True])
def test_avx2_linear_a8_is_bitwise_the_eager_kernel(rows, shape, with_bias):
    # odd output rows (the n % 4 tail), columns not a multiple of 16 (the scalar tail), one and
    # an odd number of activation rows (the pairs' tail); integer sums are exact
    fmt = AffineQuantized.encode(_w(*shape), 8)
    x = torch.randn(rows, shape[1], generator=torch.Generator().manual_seed(1)) * 3
    x[0, 0] = 0.0
    if rows > 2:
        x[2] = 0.0
    b = torch.randn(shape[0]) if with_bias else None
    k = dispatch._by_name("linear_a8", "int8_avx2")
    got = k.run(k.prepare(fmt), x, fmt, bias=b)
    assert got.dtype == torch.float32 and torch.equal(got, _linear_a8(None, x, fmt, b))


@needs_avx2
def test_avx2_kernel_sums_extreme_integers_exactly():
    # every product at +-127 * +-127 (the sums a saturating u8 x s8 kernel would clip)
    w = torch.full((8, 4096), 127.0)
    w[1::2] = -127.0
    fmt = AffineQuantized.encode(w, 8)
    x = torch.full((2, 4096), 5.0)
    x[1] = -5.0
    k = dispatch._by_name("linear_a8", "int8_avx2")
    got = k.run(k.prepare(fmt), x, fmt)
    assert torch.equal(got, _linear_a8(None, x, fmt))
    assert torch.allclose(got, x @ w.t(), rtol=1e-5)


@needs_avx2
def test_avx2_kernel_is_for_a_few_rows_only():
    from modelpress.kernels.int8 import AVX2_MAX_ROWS

    fmt = AffineQuantized.encode(_w(12, 40), 8)
    names = lambda rows: [k.name for k in kernels.candidates("linear_a8", fmt, torch.randn(rows, 40))]  # noqa: E731
    assert "int8_avx2" in names(1) and "int8_avx2" in names(AVX2_MAX_ROWS)
    assert "int8_avx2" not in names(AVX2_MAX_ROWS + 1)


@needs_avx2
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
def test_avx2_requant_is_bitwise_the_eager_requant_kernel(fmt):
    k = dispatch._by_name("linear", "int8_requant_avx2")
    for x in (torch.randn(1, 96), torch.randn(2, 5, 96)):
        want = _linear_requant(_requant(fmt), x, fmt, torch.ones(24))
        got = k.run(k.prepare(fmt), x, fmt, bias=torch.ones(24))
        assert got.shape == (*x.shape[:-1], 24) and torch.equal(got, want)


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
    if mod.has_avx2():
        with pytest.raises(RuntimeError, match="linear_a8_avx2: qweight must be"):
            mod.linear_a8_avx2(torch.randn(2, 4), torch.zeros(3, 5, dtype=torch.int8), torch.ones(3), None)


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


def _u4_cases() -> list[AffineQuantized]:
    w = _w(37, 96, seed=4)
    awq = AffineQuantized.encode(w, 4, symmetric=False, group_size=32)
    awq = AffineQuantized.from_ints(
        awq.shape,
        awq.int_values(),
        awq.scale,
        awq.zero_point,
        4,
        32,
        in_scale=torch.rand(96, generator=torch.Generator().manual_seed(5)) + 0.5,
    )
    return [
        AffineQuantized.encode(w, 4, symmetric=False, group_size=32),
        AffineQuantized.encode(w, 4, symmetric=True, group_size=48),
        AffineQuantized.encode(w, 4, symmetric=True),  # one scale per row
        AffineQuantized.encode(w, 3, symmetric=False, group_size=16),
        AffineQuantized.encode(w, 2, symmetric=False, group_size=96),
        awq,
    ]


@needs_avx2
@pytest.mark.parametrize(
    "fmt", _u4_cases(), ids=["4bit-g32", "4bit-sym-g48", "4bit-row", "3bit-g16", "2bit", "awq"]
)
@pytest.mark.parametrize("rows", [1, 2, 16])
def test_avx2_int4_kernel_is_the_op_on_decoded_weights(fmt, rows):
    # float32 throughout: only the order of the sums differs from the reference
    k = dispatch._by_name("linear", "int4_avx2")
    x = torch.randn(rows, 96, generator=torch.Generator().manual_seed(6))
    b = torch.randn(37)
    assert k.name in [c.name for c in kernels.candidates("linear", fmt, x)]
    want = torch.nn.functional.linear(x, fmt.decode(), b)
    got = k.run(k.prepare(fmt), x, fmt, bias=b)
    assert got.dtype == torch.float32 and got.shape == want.shape
    assert ((got - want).norm() / want.norm()).item() < 1e-5
    x3 = x.reshape(1, rows, 96)  # leading dims are kept
    assert torch.allclose(
        k.run(k.prepare(fmt), x3, fmt), torch.nn.functional.linear(x3, fmt.decode()), atol=1e-4
    )


@needs_avx2
def test_avx2_int4_kernel_is_offered_only_where_it_runs():
    names = lambda fmt, x: [c.name for c in kernels.candidates("linear", fmt, x)]  # noqa: E731
    w = _w(8, 96)
    assert "int4_avx2" not in names(
        AffineQuantized.encode(w, 4, group_size=24), torch.randn(1, 96)
    )  # 24 % 16
    assert "int4_avx2" not in names(AffineQuantized.encode(_w(8, 40), 4), torch.randn(1, 40))  # 40 columns
    assert "int4_avx2" not in names(AffineQuantized.encode(w, 8), torch.randn(1, 96))  # 8 bits: int8 kernels
    assert "int4_avx2" not in names(
        AffineQuantized.encode(w, 4, group_size=32), torch.randn(17, 96)
    )  # 17 rows
    mod = ext.load()
    with pytest.raises(RuntimeError, match="multiples of 16"):
        mod.linear_u4_avx2(
            torch.randn(1, 40),
            torch.zeros(8, 20, dtype=torch.uint8),
            torch.ones(8),
            torch.zeros(8, dtype=torch.int32),
            40,
            None,
        )


def _books(granularity: str, bits: int, rows: int = 37, cols: int = 96) -> Codebook:
    g = torch.Generator().manual_seed(7)
    k = 2**bits
    codes = torch.randint(0, k, (rows * cols,), generator=g, dtype=torch.uint8)
    n_books = rows if granularity == "channel" else 1
    return Codebook.from_codes(
        (rows, cols), codes, torch.randn(n_books, k, generator=g), bits=bits, granularity=granularity
    )


@needs_avx2
@pytest.mark.parametrize(
    "fmt",
    [_books("tensor", 4), _books("channel", 4), _books("channel", 3), _books("tensor", 2)],
    ids=["tensor-4bit", "channel-4bit", "channel-3bit", "tensor-2bit"],
)
@pytest.mark.parametrize("rows", [1, 3, 16])
def test_avx2_lut_kernel_is_the_op_on_decoded_codebooks(fmt, rows):
    k = dispatch._by_name("linear", "lut4_avx2")
    x = torch.randn(rows, 96, generator=torch.Generator().manual_seed(8))
    b = torch.randn(37)
    assert k.name in [c.name for c in kernels.candidates("linear", fmt, x)]
    want = torch.nn.functional.linear(x, fmt.decode(), b)
    got = k.run(k.prepare(fmt), x.reshape(1, rows, 96), fmt, bias=b)
    assert got.shape == (1, rows, 37)
    assert ((got.reshape(rows, 37) - want).norm() / want.norm()).item() < 1e-5


@needs_avx2
def test_avx2_lut_kernel_is_offered_only_where_it_runs():
    names = lambda fmt, x: [c.name for c in kernels.candidates("linear", fmt, x)]  # noqa: E731
    assert "lut4_avx2" not in names(_books("tensor", 4, cols=40), torch.randn(1, 40))  # 40 columns
    assert "lut4_avx2" not in names(_books("tensor", 4), torch.randn(17, 96))  # 17 rows
    g = _books("tensor", 4)
    masked = Codebook.from_codes(
        (37, 96),
        g.code_values()[: 37 * 48],
        g.codebook,
        bits=4,
        granularity="tensor",
        mask=torch.arange(37 * 96).reshape(37, 96) % 2 == 0,
    )
    assert "lut4_avx2" not in names(masked, torch.randn(1, 96))  # sparse codebooks: not here
    with pytest.raises(RuntimeError, match="books must be"):
        ext.load().linear_lut4_avx2(
            torch.randn(1, 96), torch.zeros(4, 48, dtype=torch.uint8), torch.zeros(2, 16), None
        )
