"""Paired tests on hand-made ranks equal scipy's; runs on different samples are refused."""

import numpy as np
import polars as pl
import pytest
from scipy.stats import ttest_rel, wilcoxon

from r2ec.errors import UserError
from r2ec.report.significance import paired_ranks, paired_tests


def _run(d, ids, ranks):
    d.mkdir(parents=True)
    pl.DataFrame({"split": ["test"] * len(ids), "sample_id": ids, "rank": ranks}).write_parquet(d / "ranks.parquet")
    return d


def test_paired_tests_match_scipy_on_literal_ranks():
    a = np.array([1, 3, 2, 50, 1, 7, 4, 900, 2, 1])
    b = np.array([5, 3, 40, 60, 2, 30, 4, 800, 9, 12])
    na = np.where(a <= 10, 1 / np.log2(a + 1), 0.0)  # N@10 by hand: rank 1 -> 1, rank 3 -> 0.5, ...
    nb = np.where(b <= 10, 1 / np.log2(b + 1), 0.0)
    assert na[0] == 1.0 and na[1] == 0.5
    out = paired_tests(a, b, "N@10", "greater")
    assert out["wilcoxon_p"] == pytest.approx(wilcoxon(na, nb, alternative="greater").pvalue)
    assert out["ttest_p"] == pytest.approx(ttest_rel(na, nb, alternative="greater").pvalue)
    assert out["mean_a"] == pytest.approx(na.mean()) and out["nonzero_pairs"] == 6  # 3v3, 4v4, 50v60, 900v800 tie
    h = paired_tests(a, b, "H@5", "two-sided")
    ha, hb = (a <= 5).astype(float), (b <= 5).astype(float)
    assert h["wilcoxon_p"] == pytest.approx(wilcoxon(ha, hb).pvalue)
    assert paired_tests(a, a)["wilcoxon_p"] == 1.0  # no difference, no evidence


def test_paired_ranks_join_on_sample_id_and_refuse_other_samples(tmp_path):
    ra = _run(tmp_path / "a", [3, 1, 2], [10, 20, 30])
    rb = _run(tmp_path / "b", [1, 2, 3], [5, 6, 7])
    ids, x, y = paired_ranks(ra, rb)
    assert ids.tolist() == [1, 2, 3] and x.tolist() == [20, 30, 10] and y.tolist() == [5, 6, 7]
    rc = _run(tmp_path / "c", [1, 2, 4], [5, 6, 7])
    with pytest.raises(UserError, match="different test samples") as e:
        paired_ranks(ra, rc)
    assert str(tmp_path / "a") in str(e.value) and str(tmp_path / "c") in str(e.value)
