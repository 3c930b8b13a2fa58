"""torch's CPU low-precision kernels behind the seam (kernels/cpu.py) agree with the
reference op on decoded weights: odd sizes, one row and many, bias or none, the tied
embedding / LM head of a causal LM."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from modelpress import kernels
from modelpress.formats import AffineQuantized
from modelpress.kernels import dispatch


@pytest.fixture(autouse=True)
def _unpinned(monkeypatch):
    monkeypatch.delenv("MODELPRESS_KERNELS", raising=False)
    forced = dict(dispatch._forced)
    dispatch._forced.clear()
    yield
    dispatch._forced.clear()
    dispatch._forced.update(forced)


def _w(rows: int, cols: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(rows, cols, generator=torch.Generator().manual_seed(seed)) * 0.05


def _x(n: int, cols: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, cols, generator=torch.Generator().manual_seed(seed))


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


def _pinned(op: str, name: str, x: torch.Tensor, fmt, bias=None) -> torch.Tensor:
    kernels.force(op, name)
    try:
        assert kernels.chosen(op, fmt, x).name == name
        return kernels.run(op, x, fmt, bias=bias)
    finally:
        kernels.force(op, None)


_INT4_CASES = [
    # (rows, cols, bits, symmetric, group)
    (16, 64, 4, False, 32),
    (48, 256, 4, True, 128),
    (32, 384, 4, False, 128),
    (16, 512, 4, True, 256),
    (32, 192, 3, False, 64),
    (16, 96, 3, True, 32),
]


@pytest.mark.parametrize("rows, cols, bits, symmetric, group", _INT4_CASES)
@pytest.mark.parametrize("n", [1, 5, 70])
def test_int4pack_agrees_with_the_reference(rows, cols, bits, symmetric, group, n):
    fmt = AffineQuantized.encode(_w(rows, cols), bits, symmetric=symmetric, group_size=group)
    x, bias = _x(n, cols), torch.randn(rows)
    ref = F.linear(x, fmt.decode(), bias)
    out = _pinned("linear", "int4pack_bf16", x, fmt, bias)
    assert out.dtype == torch.float32 and out.shape == (n, rows)
    assert _rel(out, ref) < 0.01  # bf16 activations


def test_int4pack_with_an_awq_input_scale():
    w = _w(32, 128)
    base = AffineQuantized.encode(w, 4, symmetric=False, group_size=64)
    fmt = AffineQuantized.from_ints(
        w.shape,
        base.int_values(),
        base.scale,
        base.zero_point,
        4,
        64,
        in_scale=torch.linspace(0.5, 2.0, 128),
    )
    x = _x(3, 128)
    assert _rel(_pinned("linear", "int4pack_bf16", x, fmt), F.linear(x, fmt.decode())) < 0.01


@pytest.mark.parametrize(
    "rows, cols, bits, group",
    [(15, 64, 4, 32), (16, 64, 4, 16), (16, 64, 2, 32), (16, 64, 4, None), (16, 40, 4, 40)],
    ids=["rows-not-16", "group-16", "2-bit", "per-channel", "group-40"],
)
def test_int4pack_refuses_what_it_cannot_run(rows, cols, bits, group):
    fmt = AffineQuantized.encode(_w(rows, cols), bits, symmetric=False, group_size=group)
    assert "int4pack_bf16" not in [k.name for k in kernels.candidates("linear", fmt, _x(2, cols))]


@pytest.mark.parametrize("rows, cols", [(7, 64), (24, 96), (384, 384)])
@pytest.mark.parametrize("n", [1, 3, 65])
def test_int8pack_agrees_with_the_reference(rows, cols, n):
    fmt = AffineQuantized.encode(_w(rows, cols), 8)
    x, bias = _x(n, cols), torch.randn(rows)
    out = _pinned("linear", "int8pack_bf16", x, fmt, bias)
    assert out.dtype == torch.float32 and _rel(out, F.linear(x, fmt.decode(), bias)) < 0.01


@pytest.mark.parametrize("cols", [24, 25, 40])
def test_int8pack_is_not_offered_where_torch_reads_out_of_bounds(cols):
    fmt = AffineQuantized.encode(_w(16, cols), 8)
    assert "int8pack_bf16" not in [k.name for k in kernels.candidates("linear", fmt, _x(2, cols))]


@pytest.mark.parametrize("rows, cols", [(7, 40), (13, 25), (384, 1536)])
@pytest.mark.parametrize("n", [1, 3, 65])
@pytest.mark.parametrize("name", ["fbgemm"])
def test_fbgemm_agrees_with_the_reference(rows, cols, n, name):
    fmt = AffineQuantized.encode(_w(rows, cols), 8)
    x, bias = _x(n, cols), torch.randn(rows) * 0.1
    out = _pinned("linear_a8", name, x, fmt, bias)
    ref = F.linear(x, fmt.decode(), bias)
    assert out.dtype == torch.float32 and out.shape == (n, rows)
    assert _rel(out, ref) < 0.03  # uint8 activations
    # and without a bias
    assert _rel(_pinned("linear_a8", name, x, fmt), F.linear(x, fmt.decode())) < 0.03


@pytest.mark.parametrize(
    "op, name", [("linear_a8", "fbgemm"), ("linear", "fbgemm_requant"), ("linear", "int_mm_requant")]
)
def test_an_outlier_token_does_not_cost_the_others_their_precision(op, name):
    fmt = AffineQuantized.encode(_w(64, 128), 8)
    x = _x(16, 128)
    x[3] *= 200.0  # one token with huge activations
    bias = torch.randn(64)
    ref = F.linear(x, fmt.decode(), bias)
    out = _pinned(op, name, x, fmt, bias)
    for i in range(16):  # every row as precise as per-token quantization makes it
        assert _rel(out[i], ref[i]) < 0.02, i
    # and a batch of similar rows takes the one-range path, just as precise
    x2 = _x(16, 128)
    assert _rel(_pinned(op, name, x2, fmt, bias), F.linear(x2, fmt.decode(), bias)) < 0.02


def test_fbgemm_takes_half_precision_inputs():
    fmt = AffineQuantized.encode(_w(16, 32), 8)
    x = _x(4, 32).bfloat16()
    out = _pinned("linear_a8", "fbgemm", x, fmt)
    assert out.dtype == torch.float32 and _rel(out, F.linear(x.float(), fmt.decode())) < 0.03


def test_tied_embedding_and_lm_head_share_one_format_and_agree():
    """An int8 tied embedding / LM head: the gather for the lookup, the chosen linear
    kernel for the head, one format object with the kernels' prepared copies on it."""
    from modelpress.nn import Int8Embedding

    torch.manual_seed(0)
    emb = torch.nn.Embedding(96, 64)
    q = Int8Embedding.from_float(emb)
    fmt = q.weight
    ids = torch.tensor([[1, 95, 1, 0]])
    torch.testing.assert_close(kernels.embedding(ids, fmt), F.embedding(ids, fmt.decode()), rtol=0, atol=0)
    h = torch.randn(4, 64)
    logits = kernels.linear(h, fmt)
    assert _rel(logits, F.linear(h, fmt.decode())) < 0.01
    used = kernels.used(torch.nn.ModuleList([q]))
    assert used["embedding"] == {"int8_gather": 1}
    assert sum(used["linear"].values()) == 1


def test_moving_a_format_drops_the_prepared_copies_and_the_choice():
    fmt = AffineQuantized.encode(_w(32, 64), 4, symmetric=False, group_size=32)
    x = _x(2, 64)
    kernels.linear(x, fmt)
    assert any(k[0] == "_chosen" for k in fmt.__dict__["_kernel_state"])
    fmt.to(torch.float32)  # .to() -> invalidate
    assert not fmt.__dict__.get("_kernel_state")


@pytest.mark.parametrize(
    "op, name, fmt",
    [
        ("linear", "fbgemm_requant", AffineQuantized.encode(_w(32, 64), 4, symmetric=False, group_size=32)),
        ("linear", "int_mm_requant", AffineQuantized.encode(_w(32, 64), 4, symmetric=False, group_size=32)),
        ("linear", "int4pack_bf16", AffineQuantized.encode(_w(32, 64), 4, symmetric=False, group_size=32)),
        ("linear", "int8pack_bf16", AffineQuantized.encode(_w(32, 64), 8)),
        ("linear_a8", "fbgemm", AffineQuantized.encode(_w(32, 64), 8)),
    ],
)
def test_kernels_take_inputs_with_leading_dims(op, name, fmt):
    x = torch.randn(2, 5, 64)
    out = _pinned(op, name, x, fmt, torch.randn(32))
    assert out.shape == (2, 5, 32)
    flat = _pinned(op, name, x.reshape(10, 64), fmt, None)
    assert _rel(out.reshape(10, 32) - (out.reshape(10, 32) - flat), flat) < 1e-6


@pytest.mark.parametrize(
    "op, name, fmt",
    [
        ("linear", "fbgemm_requant", AffineQuantized.encode(_w(32, 64), 4, symmetric=False, group_size=32)),
        ("linear", "int_mm_requant", AffineQuantized.encode(_w(32, 64), 4, symmetric=False, group_size=32)),
        ("linear", "int4pack_bf16", AffineQuantized.encode(_w(32, 64), 4, symmetric=False, group_size=32)),
        ("linear", "int8pack_bf16", AffineQuantized.encode(_w(32, 64), 8)),
        ("linear_a8", "fbgemm", AffineQuantized.encode(_w(32, 64), 8)),
    ],
)
def test_kernels_take_strided_inputs(op, name, fmt):
    """What ``generate`` feeds the LM head: the last position of each sequence, a view
    whose rows are far apart (it crashed ``_weight_int8pack_mm`` before it was copied)."""
    h = torch.randn(8, 16, 64)
    x = h[:, -1:, :]
    assert not x.reshape(-1, 64).is_contiguous()
    out = _pinned(op, name, x, fmt)
    ref = F.linear(x, fmt.decode())
    assert out.shape == (8, 1, 32) and _rel(out, ref) < 0.03


def test_int8pack_takes_a_misaligned_weight():
    """A weight mmapped from a safetensors file sits at the file's offset (here 24 bytes
    past a 64-byte boundary); torch's kernel uses aligned loads and faulted on it."""
    w = _w(64, 576)
    ref_fmt = AffineQuantized.encode(w, 8)
    buf = torch.empty(64 * 576 + 64, dtype=torch.int8)
    off = (24 - buf.data_ptr()) % 64
    q = buf[off : off + 64 * 576].view(64, 576)
    q.copy_(ref_fmt.qdata)
    assert q.data_ptr() % 64 == 24
    fmt = AffineQuantized(w.shape, qdata=q, scale=ref_fmt.scale, bits=8)
    x = _x(128, 576)
    out = _pinned("linear", "int8pack_bf16", x, fmt)
    assert _rel(out, F.linear(x, fmt.decode())) < 0.01


def test_fbgemm_kernels_run_a_model_compressed_and_run_under_inference_mode():
    # inference tensors have no version counter: the packed bias's key must not read it
    import modelpress as mp

    lin = torch.nn.Linear(64, 32)
    with torch.inference_mode():
        m = mp.compress(torch.nn.Sequential(lin), "int8-dynamic", progress=False)
        kernels.force("linear_a8", "fbgemm")
        try:
            y = m(torch.randn(3, 64))
        finally:
            kernels.force("linear_a8", None)
    assert y.shape == (3, 32) and torch.isfinite(y).all()
