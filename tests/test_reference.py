"""Popularity and Random reference rows: hand-checked scores, seeded and batch-independent, written as runs."""

import json

import numpy as np
import polars as pl
import pytest

from fixtures.data_fixtures import pattern_dataset
from r2ec import config as C
from r2ec.baselines.reference import popularity_scorer, random_scorer, reference_scorer, train_reference
from r2ec.data.popularity import popularity_counts


def _train(targets, timestamps):
    return pl.DataFrame({"target_item_id": targets, "target_timestamp": timestamps})


def test_popularity_counts_train_targets_and_recent_window():
    train = _train([3, 1, 3, 2, 3, 1], [0, 1, 2, 86400 * 5, 86400 * 9, 86400 * 10])
    assert popularity_counts(train, 4).tolist() == [0, 2, 1, 3, 0]
    # last 5 days before the last train target (day 10): days 5..10 -> items 2, 3, 1
    assert popularity_counts(train, 4, recent_days=5).tolist() == [0, 1, 1, 1, 0]
    s = popularity_scorer(popularity_counts(train, 4))(pl.DataFrame({"sample_id": [7, 8]}))
    assert s.shape == (2, 5) and s[1].tolist() == [0, 2, 1, 3, 0]


def test_random_scores_are_seeded_per_sample_not_per_batch():
    sc = random_scorer(6, seed=1)
    both = sc(pl.DataFrame({"sample_id": [4, 9]}))
    alone = sc(pl.DataFrame({"sample_id": [9]}))
    assert both.shape == (2, 7) and np.allclose(both[1].numpy(), alone[0].numpy())
    assert not np.allclose(both[0].numpy(), both[1].numpy())
    assert not np.allclose(random_scorer(6, seed=2)(pl.DataFrame({"sample_id": [9]})).numpy(), alone.numpy())
    with pytest.raises(ValueError):
        reference_scorer("oracle", None, C.RandomCfg())


def test_reference_runs_through_the_shared_evaluator(tmp_path):
    items = pl.DataFrame({"item_id": list(range(1, 21)), "source_id": [str(i) for i in range(20)],
                          "title": [f"t{i}" for i in range(20)]})
    ds = pattern_dataset(items, hist=3, n_users=30, seq_len=8)
    ev = C.EvalCfg(ks=(5, 10), max_samples=15)
    for m, cfg in (("popularity", C.PopularityCfg()), ("random", C.RandomCfg(seed=3))):
        metrics = train_reference(m, ds, cfg, ev, tmp_path / m, progress=False, config={"x": 1})
        assert metrics["test"]["n_samples"] == 15 and 0 <= metrics["test"]["N@10"] <= 1
        ranks = pl.read_parquet(tmp_path / m / "ranks.parquet")
        assert set(ranks["split"]) == {"valid", "test"}
        assert json.loads((tmp_path / m / "config.json").read_text())["run"]["method"] == m
    again = train_reference("random", ds, C.RandomCfg(seed=3), ev, tmp_path / "again", progress=False)
    assert again == json.loads((tmp_path / "random" / "metrics.json").read_text())


def test_reference_methods_are_selectable_baselines():
    p = C.load("params.yaml", ["baselines=[popularity,random]", "random.seed=7"])
    assert p.baselines == ("popularity", "random") and p.random.seed == 7
    with pytest.raises(C.ConfigError, match="popularity.recent_days"):
        C.load("params.yaml", ["popularity.recent_days=-1"])
