"""Kernels' packed copies of a large weight are built a block of rows at a time (bounded
temporaries: the peak RSS of a loaded LM) and equal the whole-weight computation bitwise."""

import pytest
import torch

from modelpress.formats.affine import AffineQuantized
from modelpress.kernels import cpu, int8
from modelpress.primitives.quant import qrange


@pytest.mark.parametrize("symmetric", [True, False])
def test_chunked_requant_and_packing_equal_the_whole_weight(symmetric, monkeypatch):
    monkeypatch.setattr(int8, "REQUANT_CHUNK", 64 * 96)  # several chunks, the last one short
    w = torch.randn(1040, 96, generator=torch.Generator().manual_seed(0))
    fmt = AffineQuantized.encode(w, 4, symmetric=symmetric, group_size=32)
    whole = AffineQuantized.encode(fmt.decode(torch.float32), 8)
    got = int8._requant(fmt)
    assert torch.equal(got.qdata, whole.qdata) and torch.equal(got.scale, whole.scale)
    qmin, _ = qrange(4, symmetric)
    u = fmt.int_values() - qmin
    chunks = list(int8.code_chunks(fmt, 64 * 96))
    assert len(chunks) > 1 and torch.equal(torch.cat([c for _, c in chunks]), u)
    if hasattr(torch.ops.aten, "_convert_weight_to_int4pack_for_cpu"):
        ref = torch.ops.aten._convert_weight_to_int4pack_for_cpu(u.to(torch.int32).contiguous(), 2)
        assert torch.equal(cpu._int4pack_prepare(fmt)[0], ref)
