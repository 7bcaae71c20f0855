"""Full ranking of the target among all items, with history masking and pessimistic ties."""

from __future__ import annotations

import torch


def history_mask(scores: torch.Tensor, histories: list[list[int]],
                 keep: torch.Tensor | None = None) -> torch.Tensor:
    """``[B, N+1]`` bool (shape and device of ``scores``), True at the items of each sample's history window:
    THE history mask of evaluation, rewards and losses alike.

    ``keep`` (``[B]`` item ids, usually the targets): each row's own ``keep`` item stays unmasked even when it
    repeats a history item (training keeps such a target rankable; evaluation does so only without
    ``eval.mask_repeated_target``)."""
    mask = torch.zeros_like(scores, dtype=torch.bool)
    rows, cols = [], []
    for i, h in enumerate(histories):
        rows.extend([i] * len(h))
        cols.extend(h)
    if cols:
        mask[torch.as_tensor(rows, device=scores.device),
             torch.as_tensor(cols, dtype=torch.long, device=scores.device)] = True
    if keep is not None:
        keep = torch.as_tensor(keep).to(scores.device).long().view(-1)
        mask[torch.arange(scores.shape[0], device=scores.device), keep] = False
    return mask


def rank_targets(scores: torch.Tensor, targets: torch.Tensor, histories: list[list[int]] | None,
                 mask_repeated_target: bool = True) -> torch.Tensor:
    """1-based rank of each target among all items.

    ``scores`` is ``[B, N + 1]``: column ``i`` scores item id ``i``; column 0 (no item) is never ranked.
    Items of ``histories[b]`` are excluded (score -inf). With ``mask_repeated_target`` (the reference
    behaviour) a target that repeats a history item is excluded as well and so lands at the bottom; without it
    the target stays rankable. Ties count against the target:

        rank_b = 1 + #{ j != target_b : s_bj >= s_b,target_b }

    so a constant scorer ranks every target last instead of first.
    """
    if scores.dim() != 2:
        raise ValueError(f"scores must be [batch, n_items + 1], got shape {tuple(scores.shape)}")
    s = scores.detach().to(torch.float32).clone()
    b = s.shape[0]
    targets = targets.to(torch.long).view(-1)
    if targets.numel() != b:
        raise ValueError(f"{targets.numel()} targets for {b} score rows")
    if int(targets.min()) < 1 or int(targets.max()) >= s.shape[1]:
        raise ValueError("target item ids must lie in 1..N")
    s = torch.nan_to_num(s, nan=float("-inf"))
    s[:, 0] = float("-inf")
    rows = torch.arange(b)
    if histories is not None:
        s = s.masked_fill(history_mask(s, histories, None if mask_repeated_target else targets), float("-inf"))
    target_score = s[rows, targets].unsqueeze(1)
    ge = s >= target_score
    ge[:, 0] = False  # column 0 is not an item; a masked target (-inf) thus ranks last, at N
    ge[rows, targets] = False
    return 1 + ge.sum(dim=1)
