"""The shared evaluator against hand-computed cases."""

import math

import numpy as np
import polars as pl
import pytest
import torch

from r2ec.config import EvalCfg
from r2ec.eval import evaluate, evaluation_samples, metrics_from_ranks, rank_targets
from r2ec.io import Dataset


def test_metrics_hand_computed():
    ranks = np.array([1, 3, 11, 6])
    m = metrics_from_ranks(ranks, (5, 10))
    assert m["H@5"] == pytest.approx(2 / 4)
    assert m["H@10"] == pytest.approx(3 / 4)
    n5 = (1 / math.log2(2) + 1 / math.log2(4)) / 4  # ranks 1 and 3
    n10 = (1 / math.log2(2) + 1 / math.log2(4) + 1 / math.log2(7)) / 4
    assert m["N@5"] == pytest.approx(n5)
    assert m["N@10"] == pytest.approx(n10)
    assert list(m) == ["H@5", "N@5", "H@10", "N@10"]


def test_rank_basic_and_pad_column_ignored():
    # items 1..4; column 0 gets a huge score but is not an item
    scores = torch.tensor([[100.0, 0.1, 0.9, 0.5, 0.3]])
    assert rank_targets(scores, torch.tensor([2]), None).tolist() == [1]
    assert rank_targets(scores, torch.tensor([3]), None).tolist() == [2]
    assert rank_targets(scores, torch.tensor([1]), None).tolist() == [4]


def test_ties_count_against_target():
    scores = torch.zeros(1, 6)  # a constant scorer over 5 items
    assert rank_targets(scores, torch.tensor([3]), None).tolist() == [5]
    scores = torch.tensor([[0.0, 1.0, 2.0, 2.0, 0.5, 2.0]])
    # target 3 ties with items 2 and 5 -> both count against it
    assert rank_targets(scores, torch.tensor([3]), None).tolist() == [3]


def test_history_masking():
    scores = torch.tensor([[0.0, 0.9, 0.8, 0.7, 0.6]])
    # target 3 behind items 1, 2; item 1 in history -> masked out
    assert rank_targets(scores, torch.tensor([3]), [[1]]).tolist() == [2]
    assert rank_targets(scores, torch.tensor([3]), [[1, 2]]).tolist() == [1]


def test_repeated_target_masked_by_reference_default():
    scores = torch.tensor([[0.0, 0.9, 0.8, 0.7, 0.6]])
    # target 1 repeats the history: reference masks it -> last (rank N = 4)
    assert rank_targets(scores, torch.tensor([1]), [[1, 3]], mask_repeated_target=True).tolist() == [4]
    # kept rankable: best score, item 3 masked -> rank 1
    assert rank_targets(scores, torch.tensor([1]), [[1, 3]], mask_repeated_target=False).tolist() == [1]


def test_rank_rejects_bad_input():
    with pytest.raises(ValueError, match="target item ids"):
        rank_targets(torch.zeros(1, 3), torch.tensor([0]), None)
    with pytest.raises(ValueError, match="scores must be"):
        rank_targets(torch.zeros(3), torch.tensor([1]), None)


def _toy_dataset(n_items=6, n=10):
    rows = []
    for i in range(n):
        rows.append({"sample_id": i, "user_id": f"u{i % 3}", "history_item_ids": [1 + i % n_items],
                     "history_ratings": [4.0], "history_timestamps": [i], "target_item_id": 1 + (i + 1) % n_items,
                     "target_rating": 5.0, "target_timestamp": i + 1})
    df = pl.DataFrame(rows, schema={"sample_id": pl.Int64, "user_id": pl.Utf8,
                                    "history_item_ids": pl.List(pl.Int64), "history_ratings": pl.List(pl.Float64),
                                    "history_timestamps": pl.List(pl.Int64), "target_item_id": pl.Int64,
                                    "target_rating": pl.Float64, "target_timestamp": pl.Int64})
    items = pl.DataFrame({"item_id": list(range(1, n_items + 1)), "source_id": [str(i) for i in range(n_items)],
                          "title": [f"t{i}" for i in range(n_items)]})
    return Dataset("toy", None, items, {"train": df, "valid": df, "test": df}, {})


def test_evaluate_oracle_and_constant():
    ds = _toy_dataset()
    cfg = EvalCfg(ks=(1, 5), batch_size=3)

    def oracle(batch):
        s = torch.zeros(batch.height, ds.n_items + 1)
        s[torch.arange(batch.height), torch.tensor(batch["target_item_id"].to_list())] = 1.0
        return s

    m, ranks = evaluate(oracle, ds, "test", cfg, progress=False)
    assert m["H@1"] == 1.0 and m["N@5"] == 1.0 and m["n_samples"] == 10
    assert ranks.columns == ["split", "sample_id", "rank"] and ranks["rank"].to_list() == [1] * 10
    m, _ = evaluate(lambda b: torch.zeros(b.height, ds.n_items + 1), ds, "test", cfg, progress=False)
    assert m["H@5"] == 1.0 and m["H@1"] == 0.0  # 6 items, 1 masked: constant ranks the target 5th of 5


def test_evaluate_checks_scorer_shape():
    ds = _toy_dataset()
    with pytest.raises(ValueError, match="scorer returned shape"):
        evaluate(lambda b: torch.zeros(b.height, ds.n_items), ds, "test", EvalCfg(), progress=False)


def test_subsample_is_seeded_and_shared():
    ds = _toy_dataset(n=50)
    cfg = EvalCfg(max_samples=7, seed=3)
    a = evaluation_samples(ds, "test", cfg)["sample_id"].to_list()
    b = evaluation_samples(ds, "test", cfg)["sample_id"].to_list()
    assert a == b and len(a) == 7 and a == sorted(a)
    assert evaluation_samples(ds, "test", EvalCfg(max_samples=7, seed=4))["sample_id"].to_list() != a
    assert evaluation_samples(ds, "test", EvalCfg(max_samples=0)).height == 50


def test_history_mask_is_the_one_mask():
    from r2ec.eval.ranking import history_mask
    s = torch.zeros(2, 6)
    m = history_mask(s, [[1, 3], []])
    assert m.tolist() == [[False, True, False, True, False, False], [False] * 6]
    kept = history_mask(s, [[1, 3], [2]], keep=torch.tensor([3, 5]))
    assert kept.tolist() == [[False, True, False, False, False, False], [False, False, True, False, False, False]]
