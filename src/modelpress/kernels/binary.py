"""Kernels of the ``binary`` and ``ternary`` formats (``formats/binary.py``).

- ``linear_xnor`` (binary weights × binary activations, ``nn.binary.XnorLinear``): the
  ``reference`` kernel binarizes the input per token (``sign(x)·mean|x|``, or ``sign(x)``)
  and calls ``F.linear`` on the decoded weight; ``xnor_popcount`` packs the input's signs
  into bytes and computes ``K - 2·popcount(x_bits XOR w_bits)`` per (token, row) with a
  256-entry popcount table, then scales by ``β_token · α_row`` (exact integer dot
  products: XNOR-Net's kernel). Pure torch has no popcount instruction, so the table
  gather runs at memory speed: slower than the fp32 GEMM here (it is the oracle-checked
  reference of what a native kernel computes, not a speed path).
- ``linear`` on ternary weights (and binary weights with one scale per row, or none): a
  ternary weight times a per-row scale *is* a symmetric int8 weight with values in
  {-1, 0, +1} and that scale, so torch's int8 weight kernels run it with no loss in the
  weight: ``ternary_int8pack`` (``aten._weight_int8pack_mm``, bf16 activations; one row,
  LM decode) and ``ternary_fbgemm`` (fbgemm's dynamic W8A8 linear; many rows). They
  multiply (int8 GEMMs), which on CPUs is faster than any add/subtract loop written in
  torch ops; ``ternary_avx2`` runs the same int8 view through modelpress's own AVX2 int8
  GEMM (``int8.py``: exact int8 activations, for a few rows); a multiplication-free (LUT /
  add-subtract) kernel is not built. Everything else (per-group binary scales ...) takes
  ``fbgemm_requant`` or the reference, as every weight-only format does.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
import torch.nn.functional as F

from ..formats.base import CompressedTensor
from ..formats.binary import BinaryTensor, TernaryTensor
from ..primitives.bitpack import pack_bits
from .cpu import _ALIGN, _cpu_rows, _fbgemm_run, _has_op, _int8pack_linear, _Packed, _rows, _unflat
from .dispatch import Kernel, register_kernel

__all__ = ["binarize_input"]

_LOWEST = -1000


def binarize_input(x: torch.Tensor, scaled: bool) -> torch.Tensor:
    """XNOR-Net's input binarization per row (last dim), in ``x``'s dtype: ``sign(x)·β``
    with ``β = mean|x|`` (``scaled``), else ``sign(x)``; ``sign(0) = +1``."""
    xf = x.float()
    q = torch.where(xf >= 0, 1.0, -1.0)
    if scaled:
        q = q * xf.abs().mean(-1, keepdim=True)
    return q.to(x.dtype)


def _xnor_reference(
    state: None,
    x: torch.Tensor,
    fmt: CompressedTensor,
    bias: torch.Tensor | None = None,
    act_scaled: bool = True,
) -> torch.Tensor:
    return F.linear(
        binarize_input(x, act_scaled), fmt.decode(x.dtype), None if bias is None else bias.to(x.dtype)
    )


# -- XNOR + popcount ------------------------------------------------------------------------

_POPCOUNT = torch.tensor([bin(i).count("1") for i in range(256)], dtype=torch.int32)


def _row_bits(positive: torch.Tensor) -> torch.Tensor:
    """``(n, k)`` bool -> ``(n, ceil(k/8))`` uint8, each row on whole bytes (padded with
    ones on both operands, so the padding never differs)."""
    n, k = positive.shape
    pad = (-k) % 8
    if pad:
        positive = torch.cat([positive, positive.new_ones(n, pad)], dim=1)
    return pack_bits(positive.to(torch.uint8).reshape(-1), 1).reshape(n, -1)


def _xnor_ok(fmt: CompressedTensor, x: torch.Tensor) -> bool:
    return (
        isinstance(fmt, BinaryTensor)
        and fmt.group_size is None
        and _cpu_rows(fmt, x)
        and x.is_floating_point()
    )


def _xnor_prepare(fmt: CompressedTensor) -> Any:
    assert isinstance(fmt, BinaryTensor)
    wbits = _row_bits(fmt.signs() > 0)  # (out, ceil(in/8))
    alpha = None if fmt.scale is None else fmt.scale.float().reshape(1, -1)  # (1, out)
    return wbits, alpha


_CHUNK = 1 << 22  # bytes of XOR results per step (bounded temporaries)


def _xnor_popcount(
    state: Any,
    x: torch.Tensor,
    fmt: CompressedTensor,
    bias: torch.Tensor | None = None,
    act_scaled: bool = True,
) -> torch.Tensor:
    wbits, alpha = state
    x2 = _rows(x).float()
    k = x2.shape[1]
    xbits = _row_bits(x2 >= 0)  # (tokens, ceil(in/8))
    lut = _POPCOUNT.to(x2.device)
    out, nb = wbits.shape
    step = max(1, _CHUNK // max(1, out * nb))
    diff = torch.empty(x2.shape[0], out, dtype=torch.int32, device=x2.device)
    for s in range(0, x2.shape[0], step):
        xor = torch.bitwise_xor(xbits[s : s + step].unsqueeze(1), wbits.unsqueeze(0))  # (t, out, nb)
        diff[s : s + step] = lut[xor.long()].sum(-1, dtype=torch.int32)
    y = (k - 2 * diff).to(torch.float32)  # exact dot products of the ±1 vectors
    if act_scaled:
        y.mul_(x2.abs().mean(-1, keepdim=True))
    if alpha is not None:
        y.mul_(alpha)
    if bias is not None:
        y.add_(bias.float())
    return _unflat(y.to(x.dtype), x)


# -- ternary (and per-row binary) through the int8 weight kernels -------------------------


def _int8_view_ok(fmt: CompressedTensor) -> bool:
    if isinstance(fmt, TernaryTensor):
        return True
    return isinstance(fmt, BinaryTensor) and fmt.group_size is None


def _int8_view(fmt: CompressedTensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The weight as int8 ``(rows, cols)`` in {-1, 0, +1} and a float32 scale per row."""
    rows = int(fmt.shape[0])
    if isinstance(fmt, TernaryTensor):
        q = fmt.int_values().contiguous()
        s = fmt.scale.float().reshape(-1).expand(rows) if fmt.granularity == "tensor" else fmt.scale.float()
    else:
        assert isinstance(fmt, BinaryTensor)
        q = fmt.signs().to(torch.int8).contiguous()
        s = torch.ones(rows, device=q.device) if fmt.scale is None else fmt.scale.float()
    return q, s.reshape(-1).contiguous()


def _int8pack_ok(fmt: CompressedTensor, x: torch.Tensor) -> bool:
    # the kernel reads out of bounds when the width is not a multiple of 32 (cpu.py)
    return _int8_view_ok(fmt) and _cpu_rows(fmt, x) and x.is_floating_point() and int(fmt.shape[1]) % 32 == 0


def _int8pack_prepare(fmt: CompressedTensor) -> Any:
    q, s = _int8_view(fmt)
    if q.data_ptr() % _ALIGN:
        q = q.clone()
    return s.to(torch.bfloat16).contiguous(), q


def _fbgemm_ok(fmt: CompressedTensor, x: torch.Tensor) -> bool:
    return (
        _int8_view_ok(fmt) and _cpu_rows(fmt, x) and x.dtype in (torch.float32, torch.bfloat16, torch.float16)
    )


def _fbgemm_prepare(fmt: CompressedTensor) -> Any:
    q, s = _int8_view(fmt)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the quantized-tensor constructors are deprecated
        qw = torch._make_per_channel_quantized_tensor(q, s.double(), torch.zeros(len(s), dtype=torch.long), 0)
        return _Packed(qw)


register_kernel(Kernel("reference", "linear_xnor", ("*",), _xnor_reference, priority=_LOWEST))
register_kernel(
    Kernel(
        "xnor_popcount",
        "linear_xnor",
        ("binary",),
        _xnor_popcount,
        prepare=_xnor_prepare,
        supports=_xnor_ok,
        priority=5,
        tolerance=1e-5,  # exact integer dot products; only the float scaling rounds
    )
)
if _has_op("aten", "_weight_int8pack_mm"):
    register_kernel(
        Kernel(
            "ternary_int8pack",
            "linear",
            ("ternary", "binary"),
            _int8pack_linear,
            prepare=_int8pack_prepare,
            supports=_int8pack_ok,
            priority=6,
            tolerance=0.02,  # bf16 activations; the weight is exact
        )
    )
if _has_op("quantized", "linear_dynamic") and _has_op("quantized", "linear_prepack"):
    register_kernel(
        Kernel(
            "ternary_fbgemm",
            "linear",
            ("ternary", "binary"),
            _fbgemm_run(in_dtype=True),
            prepare=_fbgemm_prepare,
            supports=_fbgemm_ok,
            priority=9,
            tolerance=0.05,  # int8 activations; the weight is exact
        )
    )


# -- the same int8 view through modelpress's AVX2 int8 GEMM (kernels/int8.py: int8_avx2) -----
# For a few rows (LM decode) on CPUs without VNNI: exact int8 activations (no 7-bit
# saturation as in fbgemm there), the {-1, 0, +1} codes read as int8, one call from Python.


def _avx2_ternary_ok(fmt: CompressedTensor, x: torch.Tensor) -> bool:
    from .int8 import _avx2_ok

    if not (_int8_view_ok(fmt) and len(fmt.shape) == 2 and x.dtype == torch.float32):
        return False
    return _avx2_ok(fmt, _rows(x))


def _avx2_ternary_prepare(fmt: CompressedTensor) -> Any:
    return _int8_view(fmt)


def _avx2_ternary(
    state: Any, x: torch.Tensor, fmt: CompressedTensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    from .int8 import _linear_a8_avx2

    return _linear_a8_avx2(state, x, fmt, bias)


register_kernel(
    Kernel(
        "ternary_avx2",
        "linear",
        ("ternary", "binary"),
        _avx2_ternary,
        prepare=_avx2_ternary_prepare,
        supports=_avx2_ternary_ok,
        priority=7,
        tolerance=0.05,  # int8 activations; the weight is exact
    )
)
