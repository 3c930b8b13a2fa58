"""CPU kernels from torch's own low-precision ops, chosen per machine by the autotuner.

- ``fbgemm`` (``linear_a8``): fbgemm's dynamic-quantized linear (per-token accuracy: see
  ``_dynamic``)
  (``quantized::linear_dynamic`` on a ``quantized::linear_prepack``-ed per-channel int8
  weight). It quantizes activations per tensor (asymmetric uint8) where ``int_mm``
  quantizes per token, and it has AVX2 paths where ``torch._int_mm`` has none: measured
  2-5x faster than fp32 on MiniLM shapes where ``_int_mm`` is 10x slower (AVX2-only CPUs).
  Without VNNI, fbgemm multiplies u8 x s8 pairs into saturating int16 sums, so activations
  use 7 bits there (``reduce_range``). The quantized-tensor constructors it needs are
  deprecated in torch 2.13 (still present); the kernel registers only where the ops exist.
- ``int8pack_bf16`` (``linear``): ``aten._weight_int8pack_mm`` with bf16 activations, for
  symmetric per-row int8 weights: 1.2-2x fp32 at one row (LM decode), slower at many rows.
- ``int4pack_bf16`` (``linear``): ``aten._weight_int4pack_mm_for_cpu`` with bf16
  activations, for affine weights of 3 or 4 bits with groups of 32 / 64 / 128 / 256 columns
  (RTN, GPTQ, AWQ, QAT formats) and a multiple of 16 rows: 1.4-2x fp32 at one row.

- ``fbgemm_requant`` (``linear``): any weight-only format (affine of any bits and groups,
  codebooks, PQ, sparse) decoded once, re-quantized to per-row int8 (a rounding far below
  the format's own) and run through fbgemm's dynamic W8A8 linear. The stored artifact is
  unchanged; at run time the weights take 1 byte each (fbgemm's packed copy) and the
  activations are quantized on the fly, as llama.cpp does for its 4-bit formats (Q4 x Q8
  dot products). Chosen only where it agrees with the reference within 5 % and is the
  fastest; the bench shows which kernel ran and the task metric it reached.

The bf16 kernels round activations (and outputs) to bf16: their tolerance against the
reference is 2 %, the int8 one's 5 % (activation quantization). The autotuner keeps a
kernel only where it is also the fastest for that shape and row count here.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch

from ..formats.affine import AffineQuantized
from ..formats.base import CompressedTensor
from ..machine import has_vnni
from ..primitives.quant import qrange
from .dispatch import Kernel, register_kernel
from .int8 import REQUANT_TOLERANCE
from .int8 import _plain_int8 as _int8_per_channel

__all__: list[str] = []


def _has_op(namespace: str, name: str) -> bool:
    try:
        return hasattr(getattr(torch.ops, namespace), name)
    except (AttributeError, RuntimeError):
        return False


def _cpu_rows(fmt: CompressedTensor, x: torch.Tensor) -> bool:
    return x.device.type == "cpu" and x.dim() >= 2 and x.numel() > 0 and fmt.device.type == "cpu"


def _rows(x: torch.Tensor) -> torch.Tensor:
    """``x`` as ``(rows, features)`` (the linear ops accept any leading dims)."""
    return x if x.dim() == 2 else x.reshape(-1, x.shape[-1])


def _unflat(y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return y if x.dim() == 2 else y.reshape(*x.shape[:-1], y.shape[-1])


def _plain_int8(fmt: CompressedTensor) -> bool:
    return _int8_per_channel(fmt) and isinstance(fmt, AffineQuantized) and fmt.qdata.dtype == torch.int8


# -- fbgemm dynamic W8A8 -------------------------------------------------------------------


def _fbgemm_prepare(fmt: CompressedTensor) -> Any:
    assert isinstance(fmt, AffineQuantized)
    n = int(fmt.shape[0])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the quantized-tensor constructors are deprecated
        qw = torch._make_per_channel_quantized_tensor(
            fmt.qdata.contiguous(), fmt.scale.reshape(-1).double(), torch.zeros(n, dtype=torch.long), 0
        )
        return _Packed(qw)


class _Packed:
    """fbgemm's packed weight, with the layer's bias packed in (fbgemm adds it inside the
    GEMM's output pass: a separate ``add_`` cost ~20 us per call on MiniLM shapes). Only
    the packing is kept (not the int8 tensor it was made from, which would double the
    weight's memory); it is packed at the first call, when the bias is known, and
    unpacked and packed again only if the bias tensor changes (its version counter)."""

    def __init__(self, qw: torch.Tensor) -> None:
        self._qw: torch.Tensor | None = qw
        self.key: tuple[int, int] | None = None
        self.packed: Any = None

    def get(self, bias: torch.Tensor | None) -> Any:
        # (an inference tensor, made under torch.inference_mode, has no version counter)
        key = None if bias is None else (bias.data_ptr(), -1 if bias.is_inference() else bias._version)
        if self.packed is None or key != self.key:
            qw = self._qw if self._qw is not None else torch.ops.quantized.linear_unpack(self.packed)[0]
            b = None if bias is None else bias.detach().float().contiguous()
            self.packed = torch.ops.quantized.linear_prepack(qw, b)
            self.key, self._qw = key, None
        return self.packed


def _fbgemm_ok(fmt: CompressedTensor, x: torch.Tensor) -> bool:
    return (
        _plain_int8(fmt) and _cpu_rows(fmt, x) and x.dtype in (torch.float32, torch.bfloat16, torch.float16)
    )


_REDUCE_RANGE = not has_vnni()


#: rows whose ranges (max |x|) differ by at most this factor share one quantization range
ROW_RANGE_RATIO = 8.0


def _dynamic(x: torch.Tensor, state: _Packed, bias: torch.Tensor | None) -> torch.Tensor:
    """fbgemm's dynamic linear, with per-token accuracy. fbgemm quantizes its whole input
    with one range, so one outlier token would cost every other token its precision (a
    test layer with one spiky token in 256; MiniLM's FFN inputs with 7-bit activations:
    7.7 % error against the reference). So the row ranges are measured first: when they
    are within ``ROW_RANGE_RATIO`` of each other, one range costs any row at most that
    factor of its own step, and the input goes as it is; otherwise each row is scaled to
    max |x| = 1 and its output scaled back (exact algebra: ``((W (x/s) + b) - b) s + b``
    with the bias packed in), as ``int_mm``'s per-token quantization would do. The factor
    is 8, not 2: on MiniLM most batches have rows 2-8x apart, and scaling them all halved
    the batch-32 throughput (measured) for no change in accuracy."""
    x = x.float()
    packed = state.get(bias)
    s = torch.linalg.vector_norm(x, float("inf"), dim=1, keepdim=True)
    lo, hi = torch.aminmax(s)
    if float(hi) <= ROW_RANGE_RATIO * float(lo):
        return torch.ops.quantized.linear_dynamic(x.contiguous(), packed, _REDUCE_RANGE)
    s.clamp_min_(1e-12)
    y = torch.ops.quantized.linear_dynamic((x / s).contiguous(), packed, _REDUCE_RANGE)
    if bias is None:
        return y.mul_(s)
    b = bias.float()
    return y.sub_(b).mul_(s).add_(b)


def _fbgemm_run(in_dtype: bool) -> Any:
    """A run function: float32 out (``linear_a8``) or ``x``'s dtype (``linear``)."""

    def run(
        state: _Packed, x: torch.Tensor, fmt: CompressedTensor, bias: torch.Tensor | None = None
    ) -> torch.Tensor:
        y = _dynamic(_rows(x), state, bias)
        return _unflat(y.to(x.dtype) if in_dtype else y, x)

    return run


# -- weight-only int8 / int4 with bf16 activations ----------------------------------------


_ALIGN = 64


def _int8pack_prepare(fmt: CompressedTensor) -> Any:
    """bf16 scales, and the int8 weight itself where it is not 64-byte aligned: the kernel
    uses aligned vector loads, and a tensor mmapped from a safetensors file sits at
    whatever offset the file gives it (a general-protection fault, measured on a loaded
    SmolLM2). The aligned copy costs 1 byte per weight, only for misaligned weights."""
    assert isinstance(fmt, AffineQuantized)
    q = fmt.qdata
    if q.data_ptr() % _ALIGN or not q.is_contiguous():
        q = q.contiguous().clone()
    return fmt.scale.reshape(-1).to(torch.bfloat16).contiguous(), q


def _int8pack_ok(fmt: CompressedTensor, x: torch.Tensor) -> bool:
    # torch 2.13's kernel reads out of bounds (wrong results, or a segfault) when the input
    # width is not a multiple of its vector width: measured on 24/25/40 columns
    return _plain_int8(fmt) and _cpu_rows(fmt, x) and x.is_floating_point() and int(fmt.shape[1]) % 32 == 0


def _int8pack_linear(
    state: Any, x: torch.Tensor, fmt: CompressedTensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    scales, q = state
    # contiguous: ``.to()`` keeps a view's strides, and the kernel reads rows as dense
    # (a strided input, e.g. the last position that ``generate`` feeds the LM head,
    # crashed it)
    xb = _rows(x).to(torch.bfloat16).contiguous()
    y = torch.ops.aten._weight_int8pack_mm(xb, q, scales).to(x.dtype)
    if bias is not None:
        y.add_(bias.to(x.dtype))
    return _unflat(y, x)


_INT4_GROUPS = (32, 64, 128, 256)


def _int4pack_ok(fmt: CompressedTensor, x: torch.Tensor) -> bool:
    # 2-bit: the bf16 offset ``z`` is up to 7 scales for weights of about one scale, and
    # its rounding alone costs ~1.5 % of the output (measured): left to the reference
    if not (isinstance(fmt, AffineQuantized) and fmt.bits in (3, 4) and _cpu_rows(fmt, x)):
        return False
    rows, cols = int(fmt.shape[0]), int(fmt.shape[1])
    g = fmt.group_size
    return g in _INT4_GROUPS and cols % g == 0 and rows % 16 == 0 and x.is_floating_point()


def _int4pack_prepare(fmt: CompressedTensor) -> Any:
    """The weight in torch's CPU int4 tile layout, and its (groups, rows, 2) scales and
    offsets: ``w = (u - 8) * s + z`` with ``u`` the unsigned code, so with ``q = u + qmin``
    and ``w = (q - zp) * s``, ``z = (8 + qmin - zp) * s``."""
    assert isinstance(fmt, AffineQuantized) and fmt.group_size is not None
    from .int8 import code_chunks

    qmin, _ = qrange(fmt.bits, fmt.symmetric)
    # packed a block of rows (a multiple of 64) at a time: the tile layout packs rows
    # independently, and an LM head's codes are never all held as int32
    packed = torch.cat(
        [torch.ops.aten._convert_weight_to_int4pack_for_cpu(u.contiguous(), 2) for _, u in code_chunks(fmt)]
    )
    s = fmt.scale.float()  # (rows, groups)
    zp = torch.zeros_like(s) if fmt.zero_point is None else fmt.zero_point.float()
    z = (8 + qmin - zp) * s
    sz = torch.stack([s.t(), z.t()], dim=-1).contiguous().to(torch.bfloat16)  # (groups, rows, 2)
    in_scale = None if fmt.in_scale is None else fmt.in_scale.float().reshape(1, -1)
    return packed, sz, in_scale


def _int4pack_linear(
    state: Any, x: torch.Tensor, fmt: CompressedTensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    assert isinstance(fmt, AffineQuantized) and fmt.group_size is not None
    packed, sz, in_scale = state
    x2 = _rows(x)
    xb = (x2.float() / in_scale if in_scale is not None else x2).to(torch.bfloat16)
    y = torch.ops.aten._weight_int4pack_mm_for_cpu(xb.contiguous(), packed, fmt.group_size, sz).to(x.dtype)
    if bias is not None:
        y.add_(bias.to(x.dtype))
    return _unflat(y, x)


def _requant_ok(fmt: CompressedTensor, x: torch.Tensor) -> bool:
    return len(fmt.shape) == 2 and _cpu_rows(fmt, x) and x.is_floating_point()


def _requant_prepare(fmt: CompressedTensor) -> Any:
    from .int8 import _requant  # (decoded a chunk of rows at a time for a large weight)

    aq = _requant(fmt)
    q, scale = aq.qdata, aq.scale.reshape(-1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the quantized-tensor constructors are deprecated
        qw = torch._make_per_channel_quantized_tensor(
            q, scale.double(), torch.zeros(len(scale), dtype=torch.long), 0
        )
        return _Packed(qw)


if _has_op("quantized", "linear_dynamic") and _has_op("quantized", "linear_prepack"):
    register_kernel(
        Kernel(
            "fbgemm",
            "linear_a8",
            ("affine",),
            _fbgemm_run(in_dtype=False),
            prepare=_fbgemm_prepare,
            supports=_fbgemm_ok,
            priority=10,
            tolerance=0.05,
        )
    )
    register_kernel(
        Kernel(
            "fbgemm_requant",
            "linear",
            ("*",),
            _fbgemm_run(in_dtype=True),
            prepare=_requant_prepare,
            supports=_requant_ok,
            priority=8,
            tolerance=REQUANT_TOLERANCE,
        )
    )
if _has_op("aten", "_weight_int8pack_mm"):
    register_kernel(
        Kernel(
            "int8pack_bf16",
            "linear",
            ("affine",),
            _int8pack_linear,
            prepare=_int8pack_prepare,
            supports=_int8pack_ok,
            priority=5,
            tolerance=0.02,
        )
    )
if _has_op("aten", "_weight_int4pack_mm_for_cpu") and _has_op("aten", "_convert_weight_to_int4pack_for_cpu"):
    register_kernel(
        Kernel(
            "int4pack_bf16",
            "linear",
            ("affine",),
            _int4pack_linear,
            prepare=_int4pack_prepare,
            supports=_int4pack_ok,
            priority=5,
            tolerance=0.02,
        )
    )
