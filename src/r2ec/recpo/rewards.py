"""RecPO rewards: pure tensor functions (DESIGN.md §4).

For one trajectory of a user, with the score row ``s = cos(user, item) / tau`` over all items (column 0, the
pad item, and the items of the sample's history set to ``-inf``; the target itself stays rankable) and the
1-based ``rank`` of the target in that row:

    R_d   = 1 / log2(rank + 1)   if rank <= k_r   else 0           (discrete NDCG@k_r reward)
    R_c   = softmax(s)[target]  = exp(s_t) / sum_j exp(s_j)        (continuous reward, masked items excluded)
    R     = (1 - beta) * R_d + beta * R_c                          (fused reward; paper beta = 0.05)

``beta = 1`` is the "w/o R_d" ablation, ``beta = 0`` the "w/o R_c" one.
"""

from __future__ import annotations

import torch

from r2ec.eval.ranking import history_mask, rank_targets


def ndcg_reward(ranks: torch.Tensor, k_r: int) -> torch.Tensor:
    """``1 / log2(rank + 1)`` where ``rank <= k_r`` else ``0`` (ranks are 1-based), float32, same shape."""
    r = torch.as_tensor(ranks).to(torch.float32)
    if r.numel() and float(r.min()) < 1:
        raise ValueError("ranks are 1-based")
    return torch.where(r <= k_r, 1.0 / torch.log2(r + 1.0), torch.zeros_like(r))


def softmax_prob_reward(scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Softmax probability of each row's target over all columns of ``scores`` ``[B, N+1]``.

    Masked entries must already be ``-inf`` (they then get probability 0). Computed in float32.
    """
    logp = torch.log_softmax(scores.to(torch.float32), dim=-1)
    t = torch.as_tensor(targets, dtype=torch.long).view(-1, 1)
    return logp.gather(1, t).squeeze(1).exp()


def fused_reward(ranks: torch.Tensor, scores: torch.Tensor, targets: torch.Tensor, beta: float,
                 k_r: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(R, R_d, R_c)`` with ``R = (1 - beta) * ndcg_reward(ranks, k_r) + beta * softmax_prob_reward``."""
    rd = ndcg_reward(ranks, k_r)
    rc = softmax_prob_reward(scores, targets)
    return (1.0 - beta) * rd + beta * rc, rd, rc


def mask_history(scores: torch.Tensor, targets: torch.Tensor, histories: list[list[int]]) -> torch.Tensor:
    """Copy of ``scores`` with column 0 and each row's history items set to ``-inf``; the target stays
    (:func:`r2ec.eval.ranking.history_mask` with the target kept).

    Training rewards keep a target that repeats a history item rankable (else such a sample would give zero
    reward whatever the reasoning; the evaluator's ``eval.mask_repeated_target`` governs evaluation only).
    """
    s = scores.to(torch.float32).clone()
    s[:, 0] = float("-inf")
    return s.masked_fill(history_mask(s, histories, torch.as_tensor(targets, dtype=torch.long).view(-1)),
                         float("-inf"))


def rewards_from_scores(scores: torch.Tensor, targets: torch.Tensor, histories: list[list[int]], beta: float,
                        k_r: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mask history, rank the target (shared :func:`rank_targets`, ties against the target), fuse.

    Returns ``(R, R_d, R_c, ranks)``.
    """
    t = torch.as_tensor(targets, dtype=torch.long).view(-1)
    s = mask_history(scores, t, histories)
    ranks = rank_targets(s, t, None)
    r, rd, rc = fused_reward(ranks, s, t, beta, k_r)
    return r, rd, rc, ranks
