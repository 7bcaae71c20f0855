"""Ranking metrics from 1-based ranks of the target item."""

from __future__ import annotations

import numpy as np


def hit_at_k(ranks: np.ndarray, k: int) -> np.ndarray:
    """Per-sample hit: H@K = 1[rank <= K]."""
    return (np.asarray(ranks) <= k).astype(np.float64)


def ndcg_at_k(ranks: np.ndarray, k: int) -> np.ndarray:
    """Per-sample NDCG with one relevant item: N@K = 1 / log2(rank + 1) if rank <= K else 0."""
    r = np.asarray(ranks, dtype=np.float64)
    return np.where(r <= k, 1.0 / np.log2(r + 1.0), 0.0)


def metrics_from_ranks(ranks: np.ndarray, ks: tuple[int, ...] | list[int]) -> dict[str, float]:
    """Mean H@K and N@K over samples, keys ``H@K`` then ``N@K`` for each K (empty input -> NaN)."""
    r = np.asarray(ranks)
    out: dict[str, float] = {}
    for k in ks:
        out[f"H@{k}"] = float(hit_at_k(r, k).mean()) if r.size else float("nan")
        out[f"N@{k}"] = float(ndcg_at_k(r, k).mean()) if r.size else float("nan")
    return out
