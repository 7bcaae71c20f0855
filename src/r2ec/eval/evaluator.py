"""The shared evaluator: any method supplies a scorer, this module does the rest.

A method never computes its own metrics. It hands :func:`evaluate` a :class:`Scorer` – a callable that maps a
batch of sample rows (a polars DataFrame with the §3 sample columns) to a ``[B, N + 1]`` score tensor – and
gets back the metrics dict and the per-sample ranks that go into ``metrics.json`` / ``ranks.parquet``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np
import polars as pl
import torch
from tqdm.auto import tqdm

from r2ec.config import EvalCfg
from r2ec.eval.metrics import metrics_from_ranks
from r2ec.eval.ranking import rank_targets
from r2ec.io import Dataset, write_json, write_parquet

Scorer = Callable[[pl.DataFrame], torch.Tensor]


def evaluation_samples(ds: Dataset, split: str, cfg: EvalCfg) -> pl.DataFrame:
    """The samples of ``split`` every method is evaluated on.

    With a positive ``max_samples`` (``valid_max_samples`` for valid) this is a subsample drawn without
    replacement by ``numpy.random.default_rng(cfg.seed)``; it depends only on the split size, the cap and the
    seed, so all methods see the identical samples and paired significance tests stay valid.
    """
    df = ds.split(split)
    cap = cfg.valid_max_samples if split == "valid" else cfg.max_samples
    if cap <= 0 or cap >= df.height:
        return df
    rng = np.random.default_rng(cfg.seed + (0 if split == "test" else 1))
    idx = np.sort(rng.choice(df.height, size=cap, replace=False))
    return df[idx.tolist()]


def evaluate(scorer: Scorer, ds: Dataset, split: str, cfg: EvalCfg, *, samples: pl.DataFrame | None = None,
             desc: str | None = None, progress: bool = True, acc: Any = None) -> tuple[dict[str, Any], pl.DataFrame]:
    """Rank every evaluation sample's target over all items and average H@K / N@K.

    Returns ``(metrics, ranks)``: metrics holds ``H@K``/``N@K`` for ``cfg.ks`` plus ``n_samples`` and
    ``n_repeat_targets`` (targets that repeat a history item; with ``mask_repeated_target`` they always
    miss); ranks has columns ``split, sample_id, rank``.

    ``acc``: an Accelerator with N > 1 processes shards the evaluation by batches of ``cfg.batch_size`` samples
    (batch ``b`` on rank ``b % N``, the very batches one process scores) and gathers the ranks, so every rank
    returns the metrics and ranks of a single-process evaluation (same rows, same order). A collective then:
    every rank calls it.
    """
    from r2ec import dist
    df = evaluation_samples(ds, split, cfg) if samples is None else samples
    n_items = ds.n_items
    ranks: list[np.ndarray] = []
    repeats = 0
    n_proc = dist.world(acc)
    rank = int(acc.process_index) if n_proc > 1 else 0
    mine: dict[int, np.ndarray] = {}
    bar = tqdm(total=df.height, desc=desc or f"evaluate {split}", disable=not progress, leave=False)
    for start in range(0, df.height, cfg.batch_size):
        if n_proc > 1 and (start // cfg.batch_size) % n_proc != rank:
            continue
        batch = df.slice(start, cfg.batch_size)
        with torch.no_grad():
            scores = scorer(batch)
        if scores.shape != (batch.height, n_items + 1):
            raise ValueError(f"scorer returned shape {tuple(scores.shape)}, expected ({batch.height}, "
                             f"{n_items + 1}) (column 0 = no item)")
        hist = batch["history_item_ids"].to_list() if cfg.mask_history else None
        targets = torch.tensor(batch["target_item_id"].to_list(), dtype=torch.long)
        r = rank_targets(scores, targets, hist, cfg.mask_repeated_target)
        ranks.append(r.numpy())
        mine[start] = r.numpy()
        repeats += sum(int(t in set(h)) for t, h in zip(batch["target_item_id"].to_list(),
                                                       batch["history_item_ids"].to_list()))
        bar.update(batch.height)
    bar.close()
    if n_proc > 1:
        parts = dist.gather_objects(acc, (mine, repeats))
        merged = {k: v for m, _ in parts for k, v in m.items()}
        ranks = [merged[k] for k in sorted(merged)]
        repeats = sum(n for _, n in parts)
    all_ranks = np.concatenate(ranks) if ranks else np.zeros(0, dtype=np.int64)
    metrics: dict[str, Any] = metrics_from_ranks(all_ranks, cfg.ks)
    metrics["n_samples"] = int(df.height)
    metrics["n_repeat_targets"] = int(repeats)
    ranks_df = pl.DataFrame({"split": [split] * df.height, "sample_id": df["sample_id"],
                             "rank": pl.Series(all_ranks, dtype=pl.Int64)})
    return metrics, ranks_df


def write_run_outputs(run_dir: str | Path, metrics: dict[str, dict], ranks: list[pl.DataFrame],
                      config: dict) -> None:
    """Write ``metrics.json`` ({split: metrics}), ``ranks.parquet`` and ``config.json`` atomically."""
    run_dir = Path(run_dir)
    write_parquet(run_dir / "ranks.parquet", pl.concat(ranks) if ranks else
                  pl.DataFrame(schema={"split": pl.Utf8, "sample_id": pl.Int64, "rank": pl.Int64}))
    write_json(run_dir / "config.json", config)
    write_json(run_dir / "metrics.json", metrics)
