"""The kernel dispatcher: which kernel runs, pinning, and errors (kernels/dispatch.py)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from modelpress import kernels
from modelpress.errors import ConfigError
from modelpress.formats import AffineQuantized, Codebook, SparseTensor
from modelpress.kernels import dispatch, ext
from modelpress.primitives.quant import quantize_per_token_int8

# the C++ kernels (kernels/ext.py) are candidates only where they are built
_AVX2 = ext.available() and bool(ext.load().has_avx2())
_FUSED = (["int_mm_fused"] if ext.available() else []) + (["int8_avx2"] if _AVX2 else [])
_RQ_FUSED = (["int_mm_requant_fused"] if ext.available() else []) + (["int8_requant_avx2"] if _AVX2 else [])
_TEST_OP = "_test_dispatch_op"  # a throwaway op: registered here, removed after each test


@pytest.fixture(autouse=True)
def _clean(monkeypatch):
    """No pins from the environment or from other tests; throwaway kernels removed."""
    monkeypatch.delenv("MODELPRESS_KERNELS", raising=False)
    forced = dict(dispatch._forced)
    dispatch._forced.clear()
    yield
    dispatch._forced.clear()
    dispatch._forced.update(forced)
    dispatch.KERNELS.pop(_TEST_OP, None)


def _int8(rows: int = 12, cols: int = 40, seed: int = 0) -> AffineQuantized:
    w = torch.randn(rows, cols, generator=torch.Generator().manual_seed(seed))
    return AffineQuantized.encode(w, 8)  # symmetric, per channel


def _x(n: int, cols: int = 40, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, cols, generator=torch.Generator().manual_seed(seed))


def _others() -> list:
    w = torch.randn(12, 40, generator=torch.Generator().manual_seed(2))
    return [
        AffineQuantized.encode(w, 4),
        AffineQuantized.encode(w, 8, symmetric=False),
        AffineQuantized.encode(w, 8, group_size=8),
        AffineQuantized.from_ints(
            w.shape, _int8().qdata, _int8().scale, None, 8, None, in_scale=torch.full((40,), 2.0)
        ),
        Codebook.from_codes(
            w.shape, torch.zeros(480, dtype=torch.uint8), torch.randn(1, 4), bits=2, granularity="tensor"
        ),
        SparseTensor.encode(w * (w > 0)),
    ]


# -- choice ------------------------------------------------------------------------------------


def test_every_op_has_a_reference_kernel_last():
    for op in ("linear", "embedding", "conv", "linear_a8", "linear_a8_static"):
        ks = kernels.KERNELS[op]
        assert ks[-1].name == "reference" and "*" in ks[-1].formats
        assert [k.priority for k in ks] == sorted((k.priority for k in ks), reverse=True)


@pytest.mark.parametrize(
    "fmt", _others(), ids=["int4", "int8-asym", "int8-group", "int8-in_scale", "codebook", "sparse"]
)
def test_reference_is_chosen_when_nothing_faster_applies(fmt):
    x = _x(5)
    # (or the decoded copy: the fallback where no fast kernel applies)
    assert kernels.chosen("linear_a8", fmt, x).name in ("dense", "reference")
    # weight-only linears: only the re-quantizing fbgemm kernel besides the reference
    assert {k.name for k in kernels.candidates("linear", fmt, x)} <= {
        "fbgemm_requant",
        "int_mm_requant",
        *_RQ_FUSED,
        "dense",
        "reference",
    }
    assert kernels.chosen("embedding", fmt, torch.tensor([0, 1])).name == "reference"
    # and it computes the float op on the decoded weight
    assert torch.equal(kernels.linear_a8(x, fmt), F.linear(x, fmt.decode()))


def test_candidates_for_plain_int8_on_cpu():
    fmt = _int8()
    names = [k.name for k in kernels.candidates("linear_a8", fmt, _x(3))]
    assert names == ["fbgemm", *_FUSED, "int_mm", "dense", "reference"]
    # 40 columns: not for int8pack
    assert [k.name for k in kernels.candidates("linear", fmt, _x(3))] == [
        "fbgemm_requant",
        *_RQ_FUSED,
        "int_mm_requant",
        "dense",
        "reference",
    ]
    wide = _int8(cols=64)
    names = [k.name for k in kernels.candidates("linear", wide, _x(3, 64))]
    assert names == ["fbgemm_requant", "int8pack_bf16", *_RQ_FUSED, "int_mm_requant", "dense", "reference"]


@pytest.mark.parametrize("n", [1, 7, 33])
def test_int_mm_matches_the_reference(n):
    fmt, x = _int8(), _x(n)
    bias = torch.randn(12, generator=torch.Generator().manual_seed(3))
    kernels.force("linear_a8", "int_mm")
    assert kernels.chosen("linear_a8", fmt, x).name == "int_mm"
    out = kernels.linear_a8(x, fmt, bias)
    ref = F.linear(x, fmt.decode(), bias)  # what the reference kernel computes
    assert out.dtype == torch.float32 and out.shape == (n, 12)
    # exact up to float rounding given the per-token int8 activations it uses ...
    xq, xs = quantize_per_token_int8(x)
    torch.testing.assert_close(out, F.linear(xq.float() * xs, fmt.decode(), bias), rtol=1e-5, atol=1e-5)
    # ... and within the activation rounding of the reference: |x - xq*xs| <= xs/2 per entry,
    # so |out - ref| <= xs/2 * ||W_i||_1 for output i (plus float rounding)
    bound = 0.5 * xs * fmt.decode().abs().sum(1).reshape(1, -1)
    assert ((out - ref).abs() <= bound * 1.0001 + 1e-5).all()
    assert float((out - ref).norm() / ref.norm()) < 0.02


def test_integer_kernels_need_rows():
    fmt = _int8()
    assert kernels.chosen("linear_a8", fmt, torch.zeros(0, 40)).name == "reference"  # no rows


def test_int8_embedding_gather_equals_reference():
    fmt = _int8()
    ids = torch.tensor([[3, 0, 3], [11, 1, 0]])
    assert kernels.chosen("embedding", fmt, ids).name == "int8_gather"
    out = kernels.embedding(ids, fmt)
    torch.testing.assert_close(out, F.embedding(ids, fmt.decode()), rtol=0, atol=0)


# -- pinning -----------------------------------------------------------------------------------


def test_env_pin_switches_kernel(monkeypatch):
    fmt, x = _int8(), _x(6)
    assert kernels.chosen("linear_a8", fmt, x).name != "reference"
    monkeypatch.setenv("MODELPRESS_KERNELS", "linear_a8=reference")
    assert kernels.chosen("linear_a8", fmt, x).name == "reference"
    assert torch.equal(kernels.linear_a8(x, fmt), F.linear(x, fmt.decode()))
    # other ops are unaffected
    assert kernels.chosen("embedding", fmt, torch.tensor([1])).name == "int8_gather"


def test_env_pin_with_spaces_and_several_entries(monkeypatch):
    fmt, x = _int8(), _x(6)
    monkeypatch.setenv("MODELPRESS_KERNELS", " linear_a8 = reference , embedding=reference,")
    assert kernels.chosen("linear_a8", fmt, x).name == "reference"
    assert kernels.chosen("embedding", fmt, torch.tensor([1])).name == "reference"


def test_force_pins_and_unpins_and_wins_over_env(monkeypatch):
    fmt, x = _int8(), _x(6)
    kernels.force("linear_a8", "reference")
    assert kernels.chosen("linear_a8", fmt, x).name == "reference"
    monkeypatch.setenv("MODELPRESS_KERNELS", "linear_a8=int_mm")
    assert kernels.chosen("linear_a8", fmt, x).name == "reference"  # force() first
    kernels.force("linear_a8", None)
    assert kernels.chosen("linear_a8", fmt, x).name == "int_mm"  # now the env pin
    monkeypatch.delenv("MODELPRESS_KERNELS")
    kernels.force("linear_a8", None)  # unpinning twice is fine
    assert kernels.chosen("linear_a8", fmt, x).name != "reference"  # the machine's choice


def _one_sentence(msg: str) -> None:
    assert msg and "\n" not in msg
    assert ". " not in msg.rstrip(".")  # a single sentence


@pytest.mark.parametrize("how", ["env", "force"])
def test_pinned_kernel_that_cannot_run_is_a_config_error(monkeypatch, how):
    w4 = AffineQuantized.encode(torch.randn(12, 40, generator=torch.Generator().manual_seed(0)), 4)
    if how == "env":
        monkeypatch.setenv("MODELPRESS_KERNELS", "linear_a8=int_mm")
    else:
        kernels.force("linear_a8", "int_mm")
    with pytest.raises(ConfigError) as e:
        kernels.linear_a8(_x(3), w4)
    msg = str(e.value)
    _one_sentence(msg)
    assert "int_mm" in msg and "linear_a8" in msg and "affine" in msg and "cannot run" in msg
    # the int8 weight still runs on it
    assert kernels.chosen("linear_a8", _int8(), _x(3)).name == "int_mm"


def test_force_unknown_kernel_names_the_known_ones():
    with pytest.raises(ConfigError) as e:
        kernels.force("linear_a8", "nope")
    msg = str(e.value)
    _one_sentence(msg)
    assert "'nope'" in msg and "linear_a8" in msg
    for k in kernels.KERNELS["linear_a8"]:
        assert k.name in msg
    assert "linear_a8" not in dispatch._forced  # nothing was pinned
    with pytest.raises(ConfigError, match="known: none"):
        kernels.force("no_such_op", "reference")


def test_env_pin_of_unknown_kernel_is_a_config_error(monkeypatch):
    monkeypatch.setenv("MODELPRESS_KERNELS", "linear_a8=nope")
    with pytest.raises(
        ConfigError,
        match=r"no kernel 'nope' for op 'linear_a8' "
        r"\(known: fbgemm, int_mm_fused, int8_avx2, int_mm, dense, reference\)",
    ):
        kernels.linear_a8(_x(2), _int8())


@pytest.mark.parametrize("value", ["linear_a8", "linear_a8=reference,embedding", "reference"])
def test_malformed_env_entry_is_a_config_error(monkeypatch, value):
    monkeypatch.setenv("MODELPRESS_KERNELS", value)
    with pytest.raises(ConfigError, match="MODELPRESS_KERNELS") as e:
        kernels.chosen("linear_a8", _int8(), _x(2))
    _one_sentence(str(e.value))


def test_unknown_op_is_a_config_error():
    with pytest.raises(ConfigError, match="no kernel is registered for op 'nope'"):
        kernels.run("nope", _x(2), _int8())


# -- registration ------------------------------------------------------------------------------


def _kernel(name: str, priority: int = 0, **kw) -> kernels.Kernel:
    return kernels.Kernel(
        name, _TEST_OP, ("*",), lambda state, x, fmt: x * 0 + priority, priority=priority, **kw
    )


def test_registering_a_kernel_name_twice_is_a_value_error():
    kernels.register_kernel(_kernel("a"))
    with pytest.raises(ValueError, match=f"kernel 'a' for op '{_TEST_OP}' is registered twice"):
        kernels.register_kernel(_kernel("a", priority=5))
    assert [k.name for k in kernels.KERNELS[_TEST_OP]] == ["a"]


def test_highest_priority_that_accepts_runs():
    fmt, x = _int8(), _x(2)
    kernels.register_kernel(_kernel("low", priority=-5))
    kernels.register_kernel(_kernel("high", priority=10, supports=lambda f, x: x.shape[0] > 4))
    kernels.register_kernel(_kernel("mid", priority=3))
    kernels.register_kernel(kernels.Kernel("other_format", _TEST_OP, ("pq",), lambda s, x, f: x, priority=99))
    assert [k.name for k in kernels.KERNELS[_TEST_OP]] == ["other_format", "high", "mid", "low"]
    assert kernels.chosen(_TEST_OP, fmt, x).name == "mid"  # high does not support 2 rows
    assert kernels.chosen(_TEST_OP, fmt, _x(5)).name == "high"
    assert torch.equal(kernels.run(_TEST_OP, x, fmt), torch.full_like(x, 3))
    kernels.force(_TEST_OP, "low")
    assert torch.equal(kernels.run(_TEST_OP, x, fmt), torch.full_like(x, -5))


def test_no_accepting_kernel_is_a_config_error():
    kernels.register_kernel(_kernel("never", supports=lambda f, x: False))
    with pytest.raises(ConfigError, match=f"no kernel for op '{_TEST_OP}' runs a affine weight"):
        kernels.run(_TEST_OP, _x(2), _int8())


def test_prepare_runs_once_per_format_and_again_after_invalidate():
    calls: list[int] = []

    def prepare(fmt):
        calls.append(id(fmt))
        return fmt.qdata.sum()

    kernels.register_kernel(
        kernels.Kernel("prep", _TEST_OP, ("affine",), lambda state, x, fmt: x * 0 + state, prepare=prepare)
    )
    a, b, x = _int8(seed=0), _int8(seed=1), _x(2)
    for _ in range(3):
        torch.testing.assert_close(kernels.run(_TEST_OP, x, a), torch.full_like(x, float(a.qdata.sum())))
    assert calls == [id(a)]
    kernels.run(_TEST_OP, x, b)  # another format object has its own state
    assert calls == [id(a), id(b)]
    kernels.invalidate(a)
    kernels.run(_TEST_OP, x, a)
    assert calls == [id(a), id(b), id(a)]
    a.to("cpu")
    kernels.run(_TEST_OP, x, a)
    assert len(calls) == 4
