"""Pool the hidden state at the last occurrence of a token (the ``<answer>`` position)."""

from __future__ import annotations

import torch


def last_positions(input_ids: torch.Tensor, token_id: int) -> torch.Tensor:
    """Index of the LAST occurrence of ``token_id`` in each row of ``input_ids`` [B, T] (error if absent).

    Position-exact under left and right padding (no length arithmetic, so no off-by-one on the longest row).
    """
    hit = input_ids == token_id
    if not bool(hit.any(dim=1).all()):
        bad = (~hit.any(dim=1)).nonzero().flatten().tolist()
        raise ValueError(f"token id {token_id} absent from row(s) {bad}")
    T = input_ids.shape[1]
    return (T - 1) - hit.flip(1).to(torch.int8).argmax(dim=1)


def pool_at_last(hidden: torch.Tensor, input_ids: torch.Tensor, token_id: int) -> torch.Tensor:
    """``hidden`` [B, T, H] at the last ``token_id`` of each row of ``input_ids`` [B, T] → [B, H]."""
    pos = last_positions(input_ids, token_id).to(hidden.device)
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), pos]
