"""Item popularity from the train split: target counts, the log popularity prior and the logQ correction.

One home for what the Popularity row, BigRec's grounding, R2ec's prior and its sampling-bias correction, and
LangPTune's retriever all derive from the train targets.
"""

from __future__ import annotations

import numpy as np
import polars as pl
import torch

DAY_S = 86400


def popularity_counts(train: pl.DataFrame, n_items: int, recent_days: int = 0) -> np.ndarray:
    """``[N + 1]`` target counts of the train samples (column 0, no item, is 0).

    Timestamps are in seconds; with ``recent_days`` > 0 only targets at most that many days older than the
    last train target count."""
    df = train
    if recent_days > 0 and df.height:
        last = int(df["target_timestamp"].max())
        df = df.filter(pl.col("target_timestamp") >= last - recent_days * DAY_S)
    return np.bincount(df["target_item_id"].to_numpy(), minlength=n_items + 1).astype(np.float64)


def log_popularity_prior(train: pl.DataFrame, n_items: int, weight: float = 1.0) -> torch.Tensor:
    """``[N + 1]`` float32 ``weight * log p_hat(i)``, ``p_hat(i) = (c_i + 1) / (sum_j c_j + N)``: the add-one
    smoothed share of train targets (``c`` from :func:`popularity_counts`); column 0 (no item) is -inf.

    The popularity prior of R2ec's scores (``recpo.popularity_prior``), from the train split only."""
    c = torch.as_tensor(popularity_counts(train, n_items))
    lp = (torch.log((c + 1.0) / (c[1:].sum() + n_items)) * weight).float()
    lp[0] = float("-inf")
    return lp


def candidate_log_q(train: pl.DataFrame, n_items: int, batch_size: int, uniform_negatives: int) -> torch.Tensor:
    """``[N + 1]`` float32 ``log q`` of each item: the chance that it is a candidate of a contrastive step's item
    loss, ``q = 1 - (1 - p)^B + U / N`` (``p``: its share of train targets, ``B`` users per step, ``U`` uniform
    negatives over ``N`` items). In-batch targets are drawn in proportion to popularity, so without this
    sampling-bias (logQ) correction the loss learns to rank popular items down."""
    c = torch.as_tensor(popularity_counts(train, n_items))
    p = c / c.sum()
    q = 1.0 - (1.0 - p).pow(batch_size) + uniform_negatives / n_items
    return torch.log(q.clamp(1e-12, 1.0)).float()
