"""Training-time modules of quantization-aware training (QAT): a float weight seen through
an LSQ fake quantizer (``primitives.lsq``).

They exist only while ``methods.quantization.qat`` trains; ``to_format`` then turns each
quantizer into the same ``affine`` format post-training quantization produces, and the
layer into a ``DecodedLinear`` / ``DecodedEmbedding``. They are never saved.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..formats.affine import AffineQuantized
from ..primitives.lsq import lsq_fake_quantize, lsq_ints
from ..primitives.quant import choose_qparams

__all__ = ["FakeQuantEmbedding", "FakeQuantLinear", "WeightQuantizer"]

_EPS = 1e-12


class WeightQuantizer(nn.Module):
    """Learned scales (and zero points) of one 2-D weight, initialised from min-max RTN.

    Parameters are stored flat, ``(rows * n_groups,)``: 1-D, so the fine-tuning loop keeps
    them out of weight decay (it decays tensors of 2 or more dimensions). The asymmetric
    offset is learned in weight units (LSQ+'s ``β = -z·s``) and turned into an integer zero
    point ``z = round(-β/s)`` at each call, so it moves at the pace of the weights.
    """

    def __init__(
        self,
        weight: torch.Tensor,
        bits: int,
        group_size: int | None,
        *,
        symmetric: bool = False,
        learn_scale: bool = True,
        learn_zero_point: bool = True,
    ) -> None:
        super().__init__()
        rows, cols = weight.shape
        self.bits, self.group_size, self.symmetric = int(bits), group_size, bool(symmetric)
        self.rows, self.n_groups = int(rows), int(cols) // (cols if group_size is None else group_size)
        s, zp = choose_qparams(weight.detach(), bits, symmetric=symmetric, group_size=group_size)
        self.scale = nn.Parameter(s.reshape(-1).clone(), requires_grad=learn_scale)
        self.offset: nn.Parameter | None = None
        if zp is not None:
            beta = -zp.to(torch.float32) * s  # (rows, n_groups): -β/s rounds back to zp
            self.offset = nn.Parameter(beta.reshape(-1), requires_grad=learn_zero_point)

    def qparams(self, rows: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Effective ``(scale, zero_point)``, ``(rows, n_groups)`` (zero point still float;
        the quantizer rounds it), optionally for some rows only."""
        s = self.scale.view(self.rows, self.n_groups).abs().clamp_min(_EPS)
        beta = None if self.offset is None else self.offset.view(self.rows, self.n_groups)
        if rows is not None:
            s = s[rows]
            beta = None if beta is None else beta[rows]
        return s, None if beta is None else -beta / s

    def forward(self, w: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
        """Fake-quantized ``w`` (float32), or of ``w[rows]`` when ``rows`` is given."""
        s, z = self.qparams(rows)
        return lsq_fake_quantize(w if rows is None else w[rows], s, z, self.bits, group_size=self.group_size)

    @torch.no_grad()
    def to_format(self, w: torch.Tensor) -> AffineQuantized:
        """The ``affine`` format whose decode equals ``self(w)`` exactly."""
        s, z = self.qparams()
        q, zp = lsq_ints(w, s, z, self.bits, group_size=self.group_size)
        return AffineQuantized.from_ints(
            w.shape, q, s.detach().float().contiguous(), zp, self.bits, self.group_size
        )

    def extra_repr(self) -> str:
        return f"bits={self.bits}, group_size={self.group_size}, symmetric={self.symmetric}"


class FakeQuantLinear(nn.Module):
    """An ``nn.Linear`` (kept, trained in place) whose weight goes through a quantizer."""

    def __init__(self, linear: nn.Linear, quantizer: WeightQuantizer) -> None:
        super().__init__()
        self.linear = linear
        self.quantizer = quantizer

    @property
    def weight(self) -> torch.Tensor:
        return self.linear.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.quantizer(self.linear.weight).to(x.dtype)
        b = self.linear.bias
        return F.linear(x, w, None if b is None else b.to(x.dtype))


class FakeQuantEmbedding(nn.Module):
    """An ``nn.Embedding`` whose looked-up rows go through a quantizer (rows only: scales
    are per row, so quantizing the rows a batch uses is exact and cheap)."""

    def __init__(self, embedding: nn.Embedding, quantizer: WeightQuantizer) -> None:
        super().__init__()
        if embedding.max_norm is not None:
            raise ValueError("embeddings with max_norm cannot be fake-quantized")
        self.embedding = embedding
        self.quantizer = quantizer

    @property
    def weight(self) -> torch.Tensor:
        return self.embedding.weight

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        uniq, inverse = torch.unique(ids.reshape(-1), return_inverse=True)
        rows = self.quantizer(self.embedding.weight, uniq)  # (unique ids, dim)
        pad = self.embedding.padding_idx
        if pad is not None:  # like nn.Embedding, the padding row gets no gradient
            rows = torch.where((uniq == pad).unsqueeze(-1), rows.detach(), rows)
        rows = rows.to(self.embedding.weight.dtype)
        return rows[inverse].reshape(*ids.shape, rows.shape[-1])
