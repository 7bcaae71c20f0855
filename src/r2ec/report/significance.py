"""Paired significance tests between two runs on their shared evaluation samples (scipy).

Both runs were evaluated on the same seeded subsample (``eval.max_samples``), so their per-sample metrics
are paired by ``sample_id``. For a metric m (``N@K`` = 1/log2(rank+1) if rank <= K else 0, ``H@K`` =
1[rank <= K]) and the per-sample differences d_i = m(a_i) − m(b_i):

- Wilcoxon signed-rank test on d (``scipy.stats.wilcoxon``; zero differences dropped, its default), and
- paired t-test (``scipy.stats.ttest_rel``),

each with ``alternative`` "greater" (H1: a > b, one-sided), "less" or "two-sided" — RecBole's helper uses
"less", so the direction is always stated with the p-value.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl

from r2ec.errors import UserError
from r2ec.eval.metrics import hit_at_k, ndcg_at_k


def paired_ranks(run_a: Path, run_b: Path, split: str = "test") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(sample_ids, ranks_a, ranks_b)`` of ``split`` from two run directories' ``ranks.parquet``.

    Refuses (UserError naming both runs) when the runs were not evaluated on the same samples.
    """
    frames = []
    for run in (Path(run_a), Path(run_b)):
        f = run / "ranks.parquet"
        if not f.exists():
            raise UserError(f"{f}: not found (is {run} a finished run?)")
        frames.append(pl.read_parquet(f).filter(pl.col("split") == split).sort("sample_id"))
    a, b = frames
    if a.height == 0 or a["sample_id"].to_list() != b["sample_id"].to_list():
        raise UserError(f"{run_a} and {run_b} were evaluated on different {split} samples ({a.height} vs "
                        f"{b.height}); paired tests need the same eval.max_samples and eval.seed")
    return a["sample_id"].to_numpy(), a["rank"].to_numpy(), b["rank"].to_numpy()


def paired_tests(ranks_a: np.ndarray, ranks_b: np.ndarray, metric: str = "N@10",
                 alternative: str = "greater") -> dict:
    """Wilcoxon signed-rank and paired t-test of per-sample ``metric`` (``N@K`` or ``H@K``), a vs b."""
    from scipy.stats import ttest_rel, wilcoxon
    kind, k = metric.split("@")
    fn = {"N": ndcg_at_k, "H": hit_at_k}[kind]
    ma, mb = fn(ranks_a, int(k)), fn(ranks_b, int(k))
    d = ma - mb
    out = {"metric": metric, "alternative": alternative, "n": int(d.size), "mean_a": float(ma.mean()),
           "mean_b": float(mb.mean()), "nonzero_pairs": int(np.count_nonzero(d))}
    if out["nonzero_pairs"] == 0:  # identical per-sample metrics: no evidence either way
        out.update(wilcoxon_p=1.0, ttest_p=1.0)
        return out
    out["wilcoxon_p"] = float(wilcoxon(ma, mb, alternative=alternative).pvalue)
    out["ttest_p"] = float(ttest_rel(ma, mb, alternative=alternative).pvalue)
    return out


def best_baseline_tests(run_dirs: dict[str, Path], target: str, values: dict[str, dict], baselines: list[str],
                        cols: list[str], alpha: float, split: str = "test") -> dict[str, dict]:
    """Two-sided paired tests of ``target`` vs the best of ``baselines`` in every column of ``cols``.

    ``run_dirs`` maps a method (a Table 1 row key) to its run directory of the dataset, ``values`` maps a method
    to its test metrics (``metrics.json``'s ``test`` section); only methods in it take
    part. The best baseline of a column is the one with the highest mean (the first listed on a tie). Each
    result is :func:`paired_tests`' dict plus ``baseline``, ``direction`` (``higher`` / ``lower`` / ``equal``:
    the target's mean against the baseline's) and ``significant_ttest`` / ``significant_wilcoxon``
    (p < ``alpha``). Runs evaluated on different samples are refused (UserError naming both runs)."""
    if target not in values:
        return {}
    cands = [m for m in baselines if m in values]
    out: dict[str, dict] = {}
    pairs: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for c in cols:
        scored = [m for m in cands if values[m].get(c) is not None]
        if not scored:
            continue
        best = max(scored, key=lambda m: values[m][c])  # max keeps the first of equal maxima
        if best not in pairs:
            _, a, b = paired_ranks(run_dirs[target], run_dirs[best], split)
            pairs[best] = (a, b)
        r = paired_tests(*pairs[best], c, "two-sided")
        diff = r["mean_a"] - r["mean_b"]
        r.update(method=target, baseline=best, alpha=alpha,
                 direction="higher" if diff > 0 else "lower" if diff < 0 else "equal",
                 significant_ttest=r["ttest_p"] < alpha, significant_wilcoxon=r["wilcoxon_p"] < alpha)
        out[c] = r
    return out


def across_seed_ttest(a: dict[int, float], b: dict[int, float]) -> dict:
    """Two-sided paired t-test (``scipy.stats.ttest_rel``) of a's vs b's per-seed run metric, paired by seed over
    the seeds both have (``a`` / ``b``: seed -> the run's test metric). ``ttest_p`` is None with fewer than two
    such seeds and 1.0 when every pair is equal; a constant non-zero difference gives scipy's t = ±inf, p = 0
    (scipy's precision warning about nearly identical differences is silenced)."""
    import warnings

    from scipy.stats import ttest_rel
    seeds = [s for s in a if s in b]
    x, y = np.array([a[s] for s in seeds], dtype=float), np.array([b[s] for s in seeds], dtype=float)
    out = {"test": "ttest_rel", "alternative": "two-sided", "seeds": seeds, "values_a": x.tolist(),
           "values_b": y.tolist()}
    if len(seeds) < 2:
        out["ttest_p"] = None
    elif not np.any(x - y):
        out["ttest_p"] = 1.0
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            out["ttest_p"] = float(ttest_rel(x, y, alternative="two-sided").pvalue)
    return out
