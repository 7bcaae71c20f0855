"""Reference rows of Table 1: Popularity and Random, scored through the shared evaluator.

They learn nothing from a user's history, so every reader sees the floor a recommender has to clear:

- ``popularity``: an item's score is the number of train samples whose target it is (optionally only the
  targets of the last ``popularity.recent_days`` days of the train split). Ties count against the target, as
  for every method, so unseen items do not crowd the top.
- ``random``: uniform scores, drawn per sample from ``numpy.random.default_rng([random.seed, sample_id])`` so
  the scores do not depend on the batch size or the order in which samples are scored.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import torch

from r2ec.config import EvalCfg, PopularityCfg, RandomCfg, to_dict
from r2ec.data.popularity import popularity_counts
from r2ec.eval.evaluator import Scorer, evaluate, write_run_outputs
from r2ec.io import Dataset


def popularity_scorer(counts: np.ndarray) -> Scorer:
    """The same score row (the counts) for every sample."""
    row = torch.as_tensor(counts, dtype=torch.float32).unsqueeze(0)

    def score(batch: pl.DataFrame) -> torch.Tensor:
        return row.expand(batch.height, -1).clone()

    return score


def random_scorer(n_items: int, seed: int) -> Scorer:
    """Uniform scores seeded by ``(seed, sample_id)``: one sample always gets the same scores."""
    def score(batch: pl.DataFrame) -> torch.Tensor:
        rows = [np.random.default_rng([seed, int(sid)]).random(n_items + 1) for sid in batch["sample_id"]]
        return torch.as_tensor(np.stack(rows), dtype=torch.float32)

    return score


def reference_scorer(method: str, ds: Dataset, cfg: PopularityCfg | RandomCfg) -> Scorer:
    """The scorer of ``method`` (``popularity`` or ``random``) on ``ds``."""
    if method == "popularity":
        return popularity_scorer(popularity_counts(ds.split("train"), ds.n_items, cfg.recent_days))
    if method == "random":
        return random_scorer(ds.n_items, cfg.seed)
    raise ValueError(f"unknown reference method {method!r}")


def train_reference(method: str, ds: Dataset, cfg: PopularityCfg | RandomCfg, eval_cfg: EvalCfg,
                    run_dir: str | Path, *, progress: bool = True, config: dict | None = None) -> dict[str, dict]:
    """Evaluate a reference method on valid and test and write the run directory (nothing is trained)."""
    scorer = reference_scorer(method, ds, cfg)
    metrics, ranks = {}, []
    for split in ("valid", "test"):
        m, r = evaluate(scorer, ds, split, eval_cfg, desc=f"{method} {split}", progress=progress)
        metrics[split] = m
        ranks.append(r)
    write_run_outputs(run_dir, metrics, ranks, {**(config or {}), "run": {"method": method}})
    return metrics


# the method registry's uniform entries (r2ec.methods)
def train_method(method: str, ds: Dataset, params, run_dir: Path, cache_dir: Path, progress: bool) -> dict:
    return train_reference(method, ds, getattr(params, method), params.eval, run_dir, progress=progress,
                           config=to_dict(params))
