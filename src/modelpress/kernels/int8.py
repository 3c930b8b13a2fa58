"""INT8 kernels: ``torch._int_mm`` (int8 x int8 -> int32 GEMM, on CPU and CUDA) for
dynamic and static W8A8 linears, and a gather of int8 rows for embeddings.

``_int_mm`` is fast with AVX512-VNNI / AMX, and about 10x slower than the fp32 matmul on
AVX2-only CPUs; the autotuner (``autotune.py``) picks it only where it is the fastest.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F

from ..formats.affine import AffineQuantized
from ..formats.base import CompressedTensor
from ..primitives.quant import choose_qparams, quantize, quantize_per_token_int8
from .dispatch import Kernel, register_kernel

__all__ = ["int_mm_available"]


def int_mm_available(m: int, k: int, n: int, device: torch.device) -> bool:
    """Whether ``torch._int_mm`` runs an (m, k) x (k, n) product on ``device``."""
    if device.type == "cpu":
        return True
    if device.type == "cuda":
        return m > 16 and k % 8 == 0 and n % 8 == 0
    return False


def _plain_int8(fmt: CompressedTensor) -> bool:
    """Symmetric 8-bit, one scale per row, no AWQ input scale."""
    return (
        isinstance(fmt, AffineQuantized)
        and fmt.bits == 8
        and fmt.symmetric
        and fmt.group_size is None
        and fmt.in_scale is None
    )


# Without VNNI, _int_mm runs ~10x slower than the fp32 matmul (RESULTS §22): beyond a few rows
# the autotuner does not time it there (at 2,048 rows of an LM head one call takes ~30 s); it
# still runs where it is forced.
INT_MM_NO_VNNI_MAX_ROWS = 64


def _int_mm_slow_here(fmt: CompressedTensor, x: torch.Tensor) -> bool:
    from ..machine import has_vnni

    rows = x.numel() // max(1, int(fmt.shape[-1])) if fmt.shape else 0
    return x.device.type == "cpu" and rows > INT_MM_NO_VNNI_MAX_ROWS and not has_vnni()


def _int_mm_ok(fmt: CompressedTensor, x: torch.Tensor) -> bool:
    if not _plain_int8(fmt):
        return False
    rows = x.numel() // max(1, int(fmt.shape[1]))
    return rows > 0 and int_mm_available(rows, int(fmt.shape[1]), int(fmt.shape[0]), x.device)


def _linear_a8(
    state: None, x: torch.Tensor, fmt: AffineQuantized, bias: torch.Tensor | None = None
) -> torch.Tensor:
    xq, xs = quantize_per_token_int8(x)
    # (m, in) int8 @ (in, out) int8 -> (m, out) int32; the transposed view is what the
    # CPU kernel wants (column-major B), no copy needed.
    acc = torch._int_mm(xq, fmt.qdata.t())
    # rescale: (m, out) int32 * (m, 1) -> float32 in one pass, then * (1, out) [+ bias]
    y = torch.mul(acc, xs).mul_(fmt.scale.reshape(1, -1))
    if bias is not None:
        y.add_(bias)
    return y


def _rowsum(fmt: CompressedTensor) -> torch.Tensor:
    assert isinstance(fmt, AffineQuantized)
    return fmt.qdata.sum(dim=1, dtype=torch.int32)  # (out,) rowsum(Wq), for the zero point


def _linear_a8_static(
    wsum: torch.Tensor,
    xq: torch.Tensor,
    fmt: AffineQuantized,
    bias: torch.Tensor | None,
    act_scale: torch.Tensor,
    act_zero_point: torch.Tensor,
    act_symmetric: bool,
) -> torch.Tensor:
    acc = torch._int_mm(xq, fmt.qdata.t())  # (m, out) int32
    if not act_symmetric:
        acc = acc - act_zero_point * wsum  # exact: |acc| << 2^31
    # (m, out) int32 * (1, out) combined scale -> float32 [+ bias]
    y = torch.mul(acc, fmt.scale.reshape(1, -1) * act_scale)
    if bias is not None:
        y.add_(bias)
    return y


def _gather_ok(fmt: CompressedTensor, x: torch.Tensor) -> bool:
    return _plain_int8(fmt)


def _embedding(state: None, ids: torch.Tensor, fmt: AffineQuantized) -> torch.Tensor:
    rows = F.embedding(ids, fmt.qdata).to(torch.float32)  # (..., dim)
    return rows.mul_(F.embedding(ids, fmt.scale))  # (..., 1) per-row scale


# per-token activation quantization: a few 0.1 % relative error against the float reference
register_kernel(
    Kernel(
        "int_mm",
        "linear_a8",
        ("affine",),
        _linear_a8,
        supports=_int_mm_ok,
        tolerance=0.05,
        known_slow=_int_mm_slow_here,
    )
)
register_kernel(
    Kernel(
        "int_mm",
        "linear_a8_static",
        ("affine",),
        _linear_a8_static,
        prepare=_rowsum,
        supports=_int_mm_ok,
        tolerance=1e-3,
    )
)
register_kernel(Kernel("int8_gather", "embedding", ("affine",), _embedding, supports=_gather_ok))


# -- any weight-only format, re-quantized to per-row int8, through int_mm -------------------

#: relative error a re-quantizing kernel may add to a weight-only layer: per-row int8 weights
#: and per-token int8 activations add ~2 % per layer (MiniLM: median 1.8 %, max 2.8 %;
#: SmolLM2: median 2.4 %, v_proj up to 11 %). At 5 % SmolLM2's int4-g128 perplexity was
#: 6.2 % above the reference kernels'; at 3 % 2.8 % (its worst layers stay on exact
#: kernels), at 2 % 2.3 % but half of MiniLM's layers lose the fast path
#: (benchmarks/requant_quality.py, docs/kernels.md)
REQUANT_TOLERANCE = 0.03


def _requant_ok(fmt: CompressedTensor, x: torch.Tensor) -> bool:
    if len(fmt.shape) != 2 or not x.is_floating_point() or x.dim() < 2:
        return False
    rows = x.numel() // max(1, int(fmt.shape[1]))
    return rows > 0 and int_mm_available(rows, int(fmt.shape[1]), int(fmt.shape[0]), x.device)


REQUANT_CHUNK = 1 << 20  # weights decoded per step when re-quantizing a large layer


def code_chunks(fmt: AffineQuantized, chunk: int = REQUANT_CHUNK) -> Iterator[tuple[int, torch.Tensor]]:
    """``(first row, codes)`` of the weight a block of rows at a time (a multiple of 64
    rows), the codes ``q - qmin`` in ``[0, 2^bits)`` as int32 ``(block rows, cols)``, so
    that packing an LM head's codes for a kernel never holds all of them as int32."""
    from ..primitives.bitpack import container_rows
    from ..primitives.quant import qrange

    rows, cols = (int(d) for d in fmt.shape)
    qmin, _ = qrange(fmt.bits, fmt.symmetric)
    step = max(64, (chunk // max(1, cols)) // 64 * 64)
    for r in range(0, rows, step):
        idx = torch.arange(r, min(rows, r + step), device=fmt.device)
        u = None if fmt.bits == 8 else container_rows(fmt.qdata, fmt.bits, rows, cols, idx)
        if u is None:  # 8-bit, or rows that do not start on a byte
            yield r, fmt.int_values()[idx] - qmin if fmt.bits != 8 else fmt.qdata[idx].to(torch.int32) - qmin
        else:
            yield r, u.to(torch.int32)


def _requant(fmt: CompressedTensor) -> AffineQuantized:
    """The weight decoded once and re-quantized to symmetric per-row int8 (a rounding far
    below the format's own); the stored artifact is unchanged. A large weight (an LM head)
    is decoded and re-quantized a chunk of rows at a time where its format decodes rows by
    themselves: the float32 copy is never whole (its temporaries had been 3x its size, the
    peak RSS of a loaded model). Per-row scales make both ways give the same integers."""
    rows = int(fmt.shape[0]) if fmt.shape else 0
    cols = int(fmt.shape.numel() // max(1, rows))
    own_rows = type(fmt).decode_rows is not CompressedTensor.decode_rows
    if len(fmt.shape) != 2 or rows * cols <= REQUANT_CHUNK or not own_rows:
        return AffineQuantized.encode(fmt.decode(torch.float32), 8)
    q = torch.empty(rows, cols, dtype=torch.int8, device=fmt.device)
    scales = []
    step = max(1, REQUANT_CHUNK // cols)
    for r in range(0, rows, step):
        idx = torch.arange(r, min(rows, r + step), device=fmt.device)
        w = fmt.decode_rows(idx, torch.float32)
        s, _ = choose_qparams(w, 8, symmetric=True)
        q[r : r + len(idx)] = quantize(w, s, None, 8)
        scales.append(s)
    return AffineQuantized.from_ints(fmt.shape, q, torch.cat(scales), None, 8, None)


def _linear_requant(
    q: AffineQuantized, x: torch.Tensor, fmt: CompressedTensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    x2 = x if x.dim() == 2 else x.reshape(-1, x.shape[-1])
    y = _linear_a8(None, x2, q, None if bias is None else bias.float())
    y = y.to(x.dtype)
    return y if x.dim() == 2 else y.reshape(*x.shape[:-1], y.shape[-1])


register_kernel(
    Kernel(
        "int_mm_requant",
        "linear",
        ("*",),
        _linear_requant,
        prepare=_requant,
        supports=_requant_ok,
        tolerance=REQUANT_TOLERANCE,
        known_slow=_int_mm_slow_here,
    )
)


# -- the same two kernels in one C++ call (kernels/ext.py, csrc/fused_cpu.cpp) --------------
# Bitwise the eager kernels' output; only the per-op dispatch from Python is gone, which at
# one row (LM decode) costs ~3x the GEMM. Candidates only where the extension is built.


def _fused_ok(fmt: CompressedTensor, x: torch.Tensor) -> bool:
    from . import ext

    return (
        x.device.type == "cpu"
        and x.dtype == torch.float32
        and x.dim() == 2
        and fmt.device.type == "cpu"
        and x.shape[0] > 0
        and ext.available()
    )


def _fused_state(q: AffineQuantized) -> tuple[torch.Tensor, torch.Tensor]:
    # views of the format's own tensors where they already have the layout (no copy)
    return q.qdata.contiguous(), q.scale.reshape(-1).to(torch.float32).contiguous()


def _fused_prepare(fmt: CompressedTensor) -> tuple[torch.Tensor, torch.Tensor]:
    assert isinstance(fmt, AffineQuantized)
    return _fused_state(fmt)


def _fused_bias(bias: torch.Tensor | None) -> torch.Tensor | None:
    if bias is None or (bias.dtype == torch.float32 and bias.is_contiguous()):
        return bias  # (the C++ kernels record no autograd; a bias that needs grad is added outside)
    return bias.detach().to(torch.float32).contiguous()


def _ext_rows(name: str, x: torch.Tensor, *args: Any) -> torch.Tensor:
    """``ext.<name>(x, *args)`` with ``x`` as contiguous ``(rows, in)`` (the C++ kernels' input);
    leading dims are kept."""
    from . import ext

    x2 = x if x.dim() == 2 else x.reshape(-1, x.shape[-1])
    y = getattr(ext.load(), name)(x2.contiguous(), *args)
    return y if x.dim() == 2 else y.reshape(*x.shape[:-1], y.shape[-1])


def _linear_a8_fused(
    state: tuple[torch.Tensor, torch.Tensor],
    x: torch.Tensor,
    fmt: CompressedTensor,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    return _ext_rows("linear_a8", x, state[0], state[1], _fused_bias(bias))


def _requant_fused_ok(fmt: CompressedTensor, x: torch.Tensor) -> bool:
    return len(fmt.shape) == 2 and _fused_ok(fmt, x.reshape(-1, x.shape[-1]) if x.dim() > 2 else x)


def _requant_fused_prepare(fmt: CompressedTensor) -> tuple[torch.Tensor, torch.Tensor]:
    return _fused_state(_requant(fmt))


register_kernel(
    Kernel(
        "int_mm_fused",
        "linear_a8",
        ("affine",),
        _linear_a8_fused,
        prepare=_fused_prepare,
        supports=lambda fmt, x: _int_mm_ok(fmt, x) and _fused_ok(fmt, x),
        priority=1,
        tolerance=0.05,
        known_slow=_int_mm_slow_here,
    )
)
register_kernel(
    Kernel(
        "int_mm_requant_fused",
        "linear",
        ("*",),
        _linear_a8_fused,  # the same call: the prepared state is the re-quantized weight
        prepare=_requant_fused_prepare,
        supports=lambda fmt, x: _requant_ok(fmt, x) and _requant_fused_ok(fmt, x),
        priority=1,
        tolerance=REQUANT_TOLERANCE,
        known_slow=_int_mm_slow_here,
    )
)


# -- the same, with the int8 GEMM in AVX2 for a few rows (csrc/fused_cpu.cpp: linear_a8_avx2) --
# Without VNNI, at::_int_mm has no fast path; int16 x int16 pair sums (vpmaddwd) are exact, so
# these are bitwise int_mm_fused / int_mm_requant_fused. Only for a few rows (LM decode): at
# many rows fbgemm and the fp32 GEMM are faster.
AVX2_MAX_ROWS = 64


def _avx2_ok(fmt: CompressedTensor, x: torch.Tensor) -> bool:
    from . import ext

    if not _fused_ok(fmt, x) or x.shape[0] > AVX2_MAX_ROWS:
        return False
    mod = ext.load()
    return bool(getattr(mod, "has_avx2", lambda: False)())


def _linear_a8_avx2(
    state: tuple[torch.Tensor, torch.Tensor],
    x: torch.Tensor,
    fmt: CompressedTensor,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    return _ext_rows("linear_a8_avx2", x, state[0], state[1], _fused_bias(bias))


register_kernel(
    Kernel(
        "int8_avx2",
        "linear_a8",
        ("affine",),
        _linear_a8_avx2,
        prepare=_fused_prepare,
        supports=lambda fmt, x: _plain_int8(fmt) and _avx2_ok(fmt, x),
        priority=1,
        tolerance=0.05,
    )
)
register_kernel(
    Kernel(
        "int8_requant_avx2",
        "linear",
        ("*",),
        _linear_a8_avx2,  # the same call on the re-quantized weight
        prepare=_requant_fused_prepare,
        supports=lambda fmt, x: (
            _requant_ok(fmt, x)
            and _requant_fused_ok(fmt, x)
            and _avx2_ok(fmt, x.reshape(-1, x.shape[-1]) if x.dim() > 2 else x)
        ),
        priority=1,
        tolerance=REQUANT_TOLERANCE,
    )
)


# -- 2-4-bit affine weights, weight-only, for a few rows in AVX2 (linear_u4_avx2) -------------
# The codes stay 4 bits in memory (their own packed copy, half a byte per weight) and the
# activations stay float32: no re-quantization error, unlike int_mm_requant / fbgemm_requant.
U4_MAX_ROWS = 16


def _u4_ok(fmt: CompressedTensor, x: torch.Tensor) -> bool:
    if not (isinstance(fmt, AffineQuantized) and fmt.bits <= 4 and len(fmt.shape) == 2):
        return False
    cols = int(fmt.shape[1])
    group = fmt.group_size or cols
    rows = x.numel() // max(1, cols)
    x2 = x.reshape(-1, cols) if x.dim() > 2 else x
    return (
        cols % 16 == 0
        and group % 16 == 0
        and cols % group == 0
        and 0 < rows <= U4_MAX_ROWS
        and _avx2_ok(fmt, x2)
    )


def _u4_prepare(
    fmt: CompressedTensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int, torch.Tensor | None]:
    from ..primitives.quant import qrange

    assert isinstance(fmt, AffineQuantized)
    rows, cols = (int(d) for d in fmt.shape)
    qmin, _ = qrange(fmt.bits, fmt.symmetric)
    packed = torch.empty(rows, cols // 2, dtype=torch.uint8, device=fmt.device)
    for r, codes in code_chunks(fmt):  # codes in [0, 2^bits), a block of rows at a time
        u = codes.to(torch.uint8).reshape(-1, cols // 16, 2, 8)
        packed[r : r + len(u)] = (u[:, :, 0, :] | (u[:, :, 1, :] << 4)).reshape(-1, cols // 2)
    scale = fmt.scale.to(torch.float32).reshape(rows, -1).contiguous()
    zp = (
        torch.zeros_like(scale, dtype=torch.int32)
        if fmt.zero_point is None
        else fmt.zero_point.to(torch.int32)
    )
    zero = (zp.reshape(rows, -1) - qmin).contiguous()  # code - zero = q - zero_point
    in_scale = None if fmt.in_scale is None else fmt.in_scale.to(torch.float32).reshape(1, -1)
    return packed, scale, zero, fmt.group_size or cols, in_scale


def _linear_u4(
    state: tuple[torch.Tensor, torch.Tensor, torch.Tensor, int, torch.Tensor | None],
    x: torch.Tensor,
    fmt: CompressedTensor,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    packed, scale, zero, group, in_scale = state
    if in_scale is not None:  # AWQ: W diag(s)^-1 x = W (x / s)
        x = x / in_scale
    return _ext_rows("linear_u4_avx2", x, packed, scale, zero, group, _fused_bias(bias))


register_kernel(
    Kernel(
        "int4_avx2",
        "linear",
        ("affine",),
        _linear_u4,
        prepare=_u4_prepare,
        supports=_u4_ok,
        priority=1,
        tolerance=1e-4,
    )
)


# -- 2-4-bit codebooks (k-means weight sharing), weight-only, a look-up table in AVX2 --------
# (linear_lut4_avx2) The codes stay 4 bits in memory, each picks its float from the row's or
# the tensor's 16 entries in registers: no decode of the weight, no re-quantization.


def _lut4_ok(fmt: CompressedTensor, x: torch.Tensor) -> bool:
    from ..formats.codebook import Codebook

    if not (
        isinstance(fmt, Codebook)
        and fmt.mask is None
        and fmt.bits <= 4
        and fmt.granularity in ("tensor", "channel")
        and len(fmt.shape) == 2
    ):
        return False
    cols = int(fmt.shape[1])
    rows = x.numel() // max(1, cols)
    x2 = x.reshape(-1, cols) if x.dim() > 2 else x
    return cols % 16 == 0 and 0 < rows <= U4_MAX_ROWS and _avx2_ok(fmt, x2)


def _lut4_prepare(fmt: CompressedTensor) -> tuple[torch.Tensor, torch.Tensor]:
    from ..formats.codebook import Codebook

    assert isinstance(fmt, Codebook)
    rows, cols = (int(d) for d in fmt.shape)
    u = fmt.code_values().to(torch.uint8).reshape(rows, cols // 16, 2, 8)
    packed = (u[:, :, 0, :] | (u[:, :, 1, :] << 4)).reshape(rows, cols // 2).contiguous()
    cb = fmt.float_codebook()  # (1 or rows, 2^bits)
    books = torch.zeros(cb.shape[0], 16, dtype=torch.float32)
    books[:, : cb.shape[1]] = cb
    return packed, books.contiguous()


def _linear_lut4(
    state: tuple[torch.Tensor, torch.Tensor],
    x: torch.Tensor,
    fmt: CompressedTensor,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    return _ext_rows("linear_lut4_avx2", x, state[0], state[1], _fused_bias(bias))


register_kernel(
    Kernel(
        "lut4_avx2",
        "linear",
        ("codebook",),
        _linear_lut4,
        prepare=_lut4_prepare,
        supports=_lut4_ok,
        priority=1,
        tolerance=1e-4,
    )
)
