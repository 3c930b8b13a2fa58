"""``LowRankLinear``: a Linear layer factorised into two smaller plain Linears.

``y = up(down(x))`` with ``down: in_features -> rank`` (no bias) and ``up: rank ->
out_features`` (the original bias): ``W (out, in) ~ up.weight (out, rank) @ down.weight
(rank, in)``. It holds ordinary ``nn.Linear`` children with stable names (``down``, ``up``),
so later methods select, quantize or cluster them by name like any other Linear
(``...query.down``, ``...query.up``). It lives here, beside the architectures, because the
manifest's ``structure`` entry rebuilds it (``models.architectures.STRUCTURE_CLASSES``).

Factorising saves parameters only when ``rank * (in + out) < in * out``, i.e. ``rank <
in * out / (in + out)`` (``saves_parameters``).
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["LowRankLinear", "breakeven_rank", "saves_parameters"]


def breakeven_rank(in_features: int, out_features: int) -> float:
    """``m·n / (m + n)``: a factorisation of rank r saves parameters only for r below it."""
    return in_features * out_features / (in_features + out_features)


def saves_parameters(in_features: int, out_features: int, rank: int) -> bool:
    """Whether ``rank`` factors (``rank·(m + n)`` weights) are fewer than the dense ``m·n``."""
    return rank * (in_features + out_features) < in_features * out_features


class LowRankLinear(nn.Module):
    """``up(down(x))``: ``down`` (in_features -> rank, no bias), ``up`` (rank -> out_features,
    with the bias when ``bias``). Drop-in for an ``nn.Linear`` of the same in / out features."""

    def __init__(
        self,
        in_features: int,
        rank: int,
        out_features: int,
        bias: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        for what, v in (("in_features", in_features), ("rank", rank), ("out_features", out_features)):
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"LowRankLinear needs a positive integer {what}, got {v!r}")
        self.in_features = in_features
        self.rank = rank
        self.out_features = out_features
        self.down = nn.Linear(in_features, rank, bias=False, device=device, dtype=dtype)  # (rank, in)
        self.up = nn.Linear(rank, out_features, bias=bias, device=device, dtype=dtype)  # (out, rank)

    @property
    def has_bias(self) -> bool:
        return getattr(self.up, "bias", None) is not None  # ``up`` may be compressed by now

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(self.down(x))

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, rank={self.rank}, out_features={self.out_features}, "
            f"bias={self.has_bias}"
        )
