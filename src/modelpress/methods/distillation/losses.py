"""Distillation losses: pure functions of student and teacher outputs (no modules, no state).

Shapes: logits ``(n, classes)`` for classification or ``(n, seq, vocab)`` for language
models (then ``mask`` ``(n, seq)`` selects the tokens that count); hidden states
``(n, seq, width)``; attention probabilities ``(n, heads, seq, seq)``; embeddings ``(n, d)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = [
    "attention_loss",
    "cosine_hidden_loss",
    "hidden_mse_loss",
    "kd_loss",
    "mutual_losses",
    "rkd_angle_loss",
    "rkd_distance_loss",
    "self_distillation_loss",
    "soft_kl",
]


def _tokens(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """``(n, seq, d) -> (tokens, d)`` keeping the masked-in tokens; ``(n, d)`` unchanged."""
    if x.dim() == 2:
        return x
    if mask is None:
        return x.reshape(-1, x.shape[-1])
    return x[mask.bool()]


def soft_kl(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    temperature: float = 1.0,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """KL(softmax(t/T) ‖ softmax(s/T)) averaged over examples (tokens), times T².

    The T² factor (Hinton et al., "Distilling the Knowledge in a Neural Network",
    arXiv 1503.02531) keeps the soft-target gradients' scale independent of T.
    """
    s = _tokens(student_logits.float(), mask) / temperature
    t = _tokens(teacher_logits.float(), mask) / temperature
    kl = F.kl_div(F.log_softmax(s, -1), F.log_softmax(t, -1), reduction="none", log_target=True).sum(-1)
    return kl.mean() * temperature**2


def kd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor | None = None,
    *,
    temperature: float = 2.0,
    alpha: float = 0.5,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Vanilla knowledge distillation (Hinton et al. 2015):
    ``alpha · T² · KL(p_t^T ‖ p_s^T) + (1 − alpha) · CE(s, labels)``.

    Without ``labels`` (unlabeled data) only the soft term counts, whatever ``alpha``.
    ``labels`` are class ids ``(n,)`` or token ids ``(n, seq)`` (already aligned with the
    logits; -100 entries are ignored).
    """
    soft = soft_kl(student_logits, teacher_logits, temperature, mask)
    if labels is None:
        return soft
    s = student_logits.float()
    hard = F.cross_entropy(s.reshape(-1, s.shape[-1]), labels.reshape(-1), ignore_index=-100)
    return alpha * soft + (1.0 - alpha) * hard


def hidden_mse_loss(
    student_hidden: torch.Tensor,
    teacher_hidden: torch.Tensor,
    projection: torch.nn.Module | None = None,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Feature distillation: MSE between (projected) student and teacher hidden states
    over the masked-in tokens (FitNets, Romero et al. arXiv 1412.6550; TinyBERT, Jiao et al.
    arXiv 1909.10351). ``projection`` (a learned Linear student width -> teacher width) is
    needed when the widths differ."""
    s = _tokens(student_hidden.float(), mask)
    t = _tokens(teacher_hidden.float(), mask)
    if projection is not None:
        s = projection(s)
    if s.shape != t.shape:
        raise ValueError(
            f"hidden widths differ (student {s.shape[-1]}, teacher {t.shape[-1]}): a projection is needed"
        )
    return F.mse_loss(s, t)


def cosine_hidden_loss(
    student_hidden: torch.Tensor, teacher_hidden: torch.Tensor, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """1 − cos(student, teacher) per token, averaged: DistilBERT's cosine embedding loss
    aligning the directions of the hidden states (Sanh et al. arXiv 1910.01108)."""
    s = _tokens(student_hidden.float(), mask)
    t = _tokens(teacher_hidden.float(), mask)
    return (1.0 - F.cosine_similarity(s, t, dim=-1)).mean()


def attention_loss(
    student_attn: torch.Tensor, teacher_attn: torch.Tensor, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """KL(teacher ‖ student) between attention distributions, per head and query token,
    averaged over the masked-in queries (MiniLM's self-attention distillation, Wang et al.
    arXiv 2002.10957). With different head counts, both are averaged over heads first.

    ``(n, heads, seq, seq)`` probabilities (rows sum to 1 over the attended keys).
    """
    s, t = student_attn.float(), teacher_attn.float()
    if s.shape[1] != t.shape[1]:
        s, t = s.mean(1, keepdim=True), t.mean(1, keepdim=True)
    eps = 1e-12
    kl = (t * ((t + eps).log() - (s + eps).log())).sum(-1)  # (n, heads, seq)
    if mask is None:
        return kl.mean()
    m = mask.float()[:, None, :].expand_as(kl)
    return (kl * m).sum() / m.sum().clamp_min(1.0)


def _pairwise_distances(e: torch.Tensor) -> torch.Tensor:
    d = torch.cdist(e, e)  # (n, n)
    off = ~torch.eye(len(e), dtype=torch.bool, device=e.device)
    return d / d[off].mean().clamp_min(1e-12)  # normalised by the mean distance


def rkd_distance_loss(student_emb: torch.Tensor, teacher_emb: torch.Tensor) -> torch.Tensor:
    """Relational KD, distance-wise (Park et al., "Relational Knowledge Distillation",
    arXiv 1904.05068): Huber loss between the mean-normalised pairwise distances of the
    student's and the teacher's embeddings of a batch (widths may differ)."""
    s, t = student_emb.float(), teacher_emb.float()
    with torch.no_grad():
        dt = _pairwise_distances(t)
    ds = _pairwise_distances(s)
    off = ~torch.eye(len(s), dtype=torch.bool, device=s.device)
    return F.smooth_l1_loss(ds[off], dt[off])


def _angles(e: torch.Tensor) -> torch.Tensor:
    """cos of the angle at j between i and k for every triplet: ``(n, n, n)``."""
    diff = F.normalize(e[None, :, :] - e[:, None, :], p=2, dim=2)  # (n, n, d): e_j - e_i, unit
    return torch.bmm(diff, diff.transpose(1, 2))  # (n, n, n): <e_j - e_i, e_k - e_i>


def rkd_angle_loss(student_emb: torch.Tensor, teacher_emb: torch.Tensor) -> torch.Tensor:
    """Relational KD, angle-wise (Park et al. 2019): Huber loss between the cosines of the
    angles formed by every triplet of examples in the student's and the teacher's
    embeddings."""
    with torch.no_grad():
        at = _angles(teacher_emb.float())
    return F.smooth_l1_loss(_angles(student_emb.float()), at)


def self_distillation_loss(
    exit_logits: list[torch.Tensor], final_logits: torch.Tensor, temperature: float = 2.0
) -> torch.Tensor:
    """Self-distillation: the deepest classifier teaches the early exits ("Be Your Own
    Teacher", Zhang et al. arXiv 1905.08094): mean over exits of T²·KL(final ‖ exit), the
    final logits detached."""
    if not exit_logits:
        raise ValueError("self-distillation needs at least one early exit")
    target = final_logits.detach()
    return torch.stack([soft_kl(e, target, temperature) for e in exit_logits]).mean()


def mutual_losses(
    logits_a: torch.Tensor,
    logits_b: torch.Tensor,
    labels: torch.Tensor | None,
    *,
    temperature: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Deep mutual learning (Zhang et al. arXiv 1706.00384): each peer minimises its
    cross-entropy plus KL(other ‖ self), the other peer's prediction held fixed. Returns the
    two peers' losses."""

    def one(own: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
        kl = soft_kl(own, other.detach(), temperature)
        if labels is None:
            return kl
        return F.cross_entropy(own.float(), labels) + kl

    return one(logits_a, logits_b), one(logits_b, logits_a)
