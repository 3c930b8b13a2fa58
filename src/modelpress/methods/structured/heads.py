"""``prune-heads``: remove attention heads for real (Michel et al. 2019, "Are Sixteen Heads
Really Better than One?", arXiv 1905.10650).

BERT-style attention: a head is ``attention_head_size`` rows of the query, key and value
projections (weights and biases) and the same columns of ``attention.output.dense``;
``num_attention_heads`` / ``all_head_size`` of the self-attention module follow (its forward
reshapes with ``-1`` heads, so fewer heads just work). Llama-style attention with grouped-query
attention (GQA): the unit is a whole key/value group — one KV head (rows of ``k_proj`` /
``v_proj``) and the ``num_key_value_groups`` query heads that read it (rows of ``q_proj``,
columns of ``o_proj``) — so every remaining query head keeps its own KV head and the
query-to-KV ratio is unchanged. Without GQA (one query head per KV head) that is one head.
"""

from __future__ import annotations

import dataclasses

from torch import nn

from ..base import CompressContext, register, register_config
from .common import StructuredConfig, run_pruning
from .groups import attention_groups

__all__ = ["PruneHeadsConfig"]


@register_config
@dataclasses.dataclass(frozen=True)
class PruneHeadsConfig(StructuredConfig):
    """Remove ``fraction`` of the attention heads (with GQA: key/value groups) per layer
    (``scope='layer'``) or over all layers (``'global'``, each layer keeps at least one).
    See ``StructuredConfig`` for the other fields."""

    name = "prune-heads"


@register(PruneHeadsConfig)
def _prune_heads(model: nn.Module, config: PruneHeadsConfig, ctx: CompressContext) -> nn.Module:
    return run_pruning(model, config, ctx, attention_groups)
