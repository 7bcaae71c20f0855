"""Softmax log-probabilities of a target among candidates: in-batch (cosine/tau or any head's logits) and over
the whole catalogue (history masked as the evaluator masks it). The item losses of R2ec (RecPO's item term, the
contrastive step, the readout fit) and of LangPTune's retriever are built from these.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from r2ec.eval.ranking import history_mask
from r2ec.llm.backbone import float32_scope


def in_batch_target_logprob(user_vecs: torch.Tensor, item_vecs: torch.Tensor, labels: torch.Tensor,
                            tau: float, center: torch.Tensor | None = None,
                            key_offset: torch.Tensor | None = None) -> torch.Tensor:
    """``log softmax(cos(user_vecs - c_u, item_vecs - c_i) / tau + o)[m, labels[m]]`` -- ``[M]`` from ``[M,H]``,
    ``[K,H]``; ``(c_u, c_i)`` from ``center`` (a constant ``[H]`` or ``[2, H]``, see
    :func:`r2ec.llm.encoder.cosine_scores`) or 0; ``o`` = ``key_offset`` (``[K]``, added to every row's logits,
    e.g. ``-log q`` of a sampling-bias correction) or 0."""
    from r2ec.llm.encoder import split_center
    with float32_scope(user_vecs):
        cu, ci = split_center(center, user_vecs)
        u = F.normalize(user_vecs.float() - cu, dim=-1)
        v = F.normalize(item_vecs.float() - ci, dim=-1)
        return target_logprob(u @ v.T / tau, labels, key_offset)


def target_logprob(logits: torch.Tensor, labels: torch.Tensor,
                   key_offset: torch.Tensor | None = None) -> torch.Tensor:
    """``log softmax(logits + o)[m, labels[m]]`` -- ``[M]`` from ``[M, K]`` logits of user rows against candidate
    columns; ``o`` = ``key_offset`` (``[K]``, added to every row) or 0. Any head's item loss (cosine, readout)."""
    logits = logits.float()
    if key_offset is not None:
        logits = logits + key_offset.to(logits).view(1, -1)
    return torch.log_softmax(logits, dim=-1).gather(1, labels.to(logits.device).view(-1, 1).long()).squeeze(1)


def catalogue_target_logprob(scores: torch.Tensor, targets: torch.Tensor,
                             histories: list[list[int]] | None = None) -> torch.Tensor:
    """``log softmax_j(s_bj)[target_b]`` over the whole catalogue -- ``[B]`` from ``[B, N+1]`` scores.

    ``s`` are cos/tau scores against a cached item table (so no gradient reaches the items); column 0 (the
    padding item) and, when ``histories`` is given, the sample's history items other than its target are
    excluded (``s = -inf``), as the evaluator excludes them from the ranking.
    """
    s = scores.float()
    if histories is not None:
        s = s.masked_fill(history_mask(s, histories, targets), float("-inf"))
    return torch.log_softmax(s, dim=-1).gather(1, targets.to(s.device).long().view(-1, 1)).squeeze(1)


def in_batch_labels(target_ids: list[int]) -> tuple[list[int], torch.Tensor]:
    """Unique in-batch targets (first-seen order) and each row's index into them."""
    uniq: list[int] = []
    pos: dict[int, int] = {}
    for t in target_ids:
        if t not in pos:
            pos[t] = len(uniq)
            uniq.append(t)
    return uniq, torch.as_tensor([pos[t] for t in target_ids], dtype=torch.long)
