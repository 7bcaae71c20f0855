"""Table 1 / Table 2 layout, significance markers and p-values, refusal of unpaired runs.

The layout is checked by parsing the written LaTeX and Markdown (tests/latex_table.py) and comparing what a reader
sees with the runs' metrics and the p-values: groups and their order, every number, bold on the best and
underline on the second of each column, markers exactly where the tests are significant, the Improve row.
"""

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from scipy.stats import ttest_rel, wilcoxon

from r2ec import config as C
from r2ec.errors import UserError
from r2ec.eval.metrics import metrics_from_ranks, ndcg_at_k
from r2ec.report.table1 import table1
from r2ec.report.tables import DATASET_NAMES, dataset_label, method_label, plain_name, table2

from latex_table import Table, parse_md, parse_tex

PAPER = Path(__file__).resolve().parents[1] / "configs/profiles/paper.yaml"
R2EC_ROW = (r"R$^2$ec &", r"R$^2$ec$^{\ddagger}$ &")  # R2ec's LaTeX row, with or without the deviation marker
DATASETS = ["movielens-100k", "Video_Games"]
N = 40
# per method, how far its ranks sit from the "good" ranks (lower = better); r2ec is best on MovieLens only
QUALITY = {"popularity": 30, "random": 200, "sasrec": 4, "gru4rec": 6, "caser": 8, "tiger": 5,
           "r2ec_zeroshot": 60, "r2ec_no_reasoning": 3, "r2ec_no_rd": 3, "r2ec": 1}


def write_run(runs: Path, dataset: str, method: str, ranks: np.ndarray, ids: np.ndarray | None = None) -> None:
    d = runs / dataset / method
    d.mkdir(parents=True, exist_ok=True)
    ids = np.arange(len(ranks)) if ids is None else ids
    pl.DataFrame({"split": ["test"] * len(ranks), "sample_id": ids, "rank": ranks.astype(np.int64)}) \
        .write_parquet(d / "ranks.parquet")
    m = metrics_from_ranks(ranks, (5, 10, 20)) | {"n_samples": len(ranks), "n_repeat_targets": 0}
    (d / "metrics.json").write_text(json.dumps({"valid": m, "test": m}))


def make_runs(root: Path) -> Path:
    runs = root / "runs"
    for k, ds in enumerate(DATASETS):
        rng = np.random.default_rng(k)
        base = rng.integers(1, 12, size=N)
        for m, q in QUALITY.items():
            if ds == "Video_Games" and m == "r2ec":
                q = 7  # worse than SASRec here
            noise = np.random.default_rng([k, len(m)]).integers(0, 3, size=N)
            write_run(runs, ds, m, base * max(q, 1) // 2 + noise + 1)
    return runs


def params(**report) -> C.Params:
    p = C.load(Path(__file__).resolve().parents[1] / "params.yaml", [f"datasets={json.dumps(DATASETS)}"])
    return C.from_dict(C.to_dict(p) | {"report": C.to_dict(p.report) | report})


def run_values(runs: Path, dataset: str, method: str) -> dict:
    return json.loads((runs / dataset / method / "metrics.json").read_text())["test"]


def check_layout(out: Path, runs: Path, groups: list[tuple[str, list[str]]], sig: dict | None = None,
                 decimals: int = 4) -> Table:
    """The .tex and its .md twin show ``groups`` (name, methods) in order over DATASETS x H/N@K columns, each run's
    test metrics, bold / underline on the best / second printed value of every column, the markers where ``sig``
    (significance.json) says, and the Improve row recomputed from the metrics; returns the parsed LaTeX."""
    tex, md = parse_tex(out.read_text()), parse_md(out.with_suffix(".md").read_text())
    assert [(g, [method_label(m) for m in ms]) for g, ms in groups] == tex.groups
    assert [(g, [plain_name(m) for m in ms]) for g, ms in groups] == md.groups
    cols = ["H@5", "N@5", "H@10", "N@10", "H@20", "N@20"]
    assert tex.columns == [(dataset_label(d), c) for d in DATASETS for c in cols]
    assert md.columns == [(DATASET_NAMES[d], c) for d in DATASETS for c in cols]
    methods = [m for _, ms in groups for m in ms]
    for j, (d, col) in enumerate((d, c) for d in DATASETS for c in cols):
        shown = {m: round(run_values(runs, d, m)[col], decimals) for m in methods}
        best, *second = sorted(set(shown.values()), reverse=True)[:2]
        r = sig["datasets"][d][col] if sig else None
        for m in methods:
            cell = tex.rows[method_label(m)][j]
            assert cell.value == shown[m], (m, d, col)
            assert cell.style == ("bold" if shown[m] == best else "under" if [shown[m]] == second else ""), (m, d, col)
            significant = m == "r2ec" and r is not None and r["significant_ttest"] and r["direction"] != "equal"
            assert cell.marker == (("better" if r["direction"] == "higher" else "worse") if significant else ""), \
                (m, d, col)
            assert md.rows[plain_name(m)][j] == cell, (m, d, col)
        if r is not None:
            ours, base = run_values(runs, d, "r2ec")[col], run_values(runs, d, r["baseline"])[col]
            assert tex.footer["Improve"][j] == f"{100 * (ours - base) / base:+.1f}\\%"
            assert md.footer["Improve"][j] == f"{100 * (ours - base) / base:+.1f}%"
    return tex


TABLE1_GROUPS = [("Reference", ["popularity", "random"]), ("Traditional", ["gru4rec", "caser", "sasrec"]),
                 ("LLM-based", ["tiger", "r2ec_zeroshot", "r2ec_no_reasoning", "r2ec"])]


def test_table1_layout_shows_the_runs_metrics_places_and_markers(tmp_path):
    runs = make_runs(tmp_path)
    out = tmp_path / "t" / "table1.tex"
    table1(params(), runs, out, tmp_path / "t" / "metrics.json", tmp_path / "t" / "significance.json")
    sig = json.loads((tmp_path / "t" / "significance.json").read_text())
    # row groups in the paper's order; methods without a run (BigRec, ...) and Table 2 ablations left out
    tex = check_layout(out, runs, TABLE1_GROUPS, sig)
    # the fixture puts significant markers of both kinds into the table, so the marker checks bite
    markers = {c.marker for c in tex.rows[method_label("r2ec")]}
    assert markers == {"better", "worse", ""}
    assert any(c.style == "under" for row in tex.rows.values() for c in row)
    assert tex.deviated == set(tex.rows)  # the default params deviate on eval keys: every row
    metrics = json.loads((tmp_path / "t" / "metrics.json").read_text())
    assert set(metrics) == set(DATASETS) and "r2ec" in metrics["Video_Games"]


def test_significance_json_equals_scipy_and_drives_markers(tmp_path):
    runs = make_runs(tmp_path)
    out = tmp_path / "table1.tex"
    table1(params(), runs, out, None, tmp_path / "sig.json")
    sig = json.loads((tmp_path / "sig.json").read_text())
    assert sig["alternative"] == "two-sided" and sig["method"] == "r2ec"
    r = sig["datasets"]["movielens-100k"]["N@10"]
    # the best non-R2ec baseline of the column (the reference rows and R2ec variants do not count)
    test = {m: json.loads((runs / "movielens-100k" / m / "metrics.json").read_text())["test"]["N@10"]
            for m in ("gru4rec", "caser", "sasrec", "tiger")}
    assert r["baseline"] == max(test, key=test.get) == "tiger" and r["direction"] == "higher"
    ranks = {m: pl.read_parquet(runs / "movielens-100k" / m / "ranks.parquet")["rank"].to_numpy()
             for m in ("r2ec", "tiger")}
    a, b = ndcg_at_k(ranks["r2ec"], 10), ndcg_at_k(ranks["tiger"], 10)
    assert r["ttest_p"] == pytest.approx(ttest_rel(a, b).pvalue)
    assert r["wilcoxon_p"] == pytest.approx(wilcoxon(a, b).pvalue)
    assert r["significant_ttest"] == (r["ttest_p"] < 0.05)
    row = next(line for line in out.read_text().splitlines() if line.startswith(R2EC_ROW))
    assert ("$^{*}$" in row) == any(v["significant_ttest"] and v["direction"] == "higher"
                                    for d in sig["datasets"].values() for v in d.values())
    games = sig["datasets"]["Video_Games"]["N@10"]
    assert games["direction"] == "lower"
    assert (r"$^{\dagger}$" in row) == any(v["significant_ttest"] and v["direction"] == "lower"
                                          for v in sig["datasets"]["Video_Games"].values())


def test_table1_refuses_runs_on_different_samples(tmp_path):
    runs = make_runs(tmp_path)
    write_run(runs, "Video_Games", "r2ec", np.arange(1, N + 1), ids=np.arange(N) + 1000)
    with pytest.raises(UserError, match="different test samples") as e:
        table1(params(), runs, tmp_path / "t.tex")
    assert "Video_Games/r2ec" in str(e.value) and "Video_Games/sasrec" in str(e.value)


def test_table1_without_r2ec_or_baselines_has_no_improve_row(tmp_path):
    runs = tmp_path / "runs"
    write_run(runs, "movielens-100k", "popularity", np.arange(1, N + 1))
    write_run(runs, "movielens-100k", "sasrec", np.arange(1, N + 1))
    text = table1(params(), runs, tmp_path / "t.tex")
    assert "Improve" not in text and "SASRec" in text and r"$^{*}$ &" not in text
    with pytest.raises(UserError, match="no run of"):
        table1(params(), tmp_path / "empty", tmp_path / "t.tex")


def test_table2_layout_shows_the_ablations_in_order(tmp_path):
    runs = make_runs(tmp_path)
    out = tmp_path / "table2.tex"
    table2(params(), runs, out)
    # no SASRec (not an ablation), no w/o R_c (no run); no markers, no Improve row
    tex = check_layout(out, runs, [("", ["r2ec_zeroshot", "r2ec_no_reasoning", "r2ec_no_rd", "r2ec"])])
    assert not tex.footer and not tex.deviated


@pytest.mark.filterwarnings("ignore:Precision loss:RuntimeWarning")  # scipy, on a constant difference over 2 seeds
def test_table1_over_seeds_shows_mean_std_and_across_seed_ttests(tmp_path):
    runs = make_runs(tmp_path)  # the first seed's runs (tmp/runs); the second seed's in tmp/seeds/7/runs
    seed7 = tmp_path / "seeds" / "7" / "runs"
    for k, ds in enumerate(DATASETS):
        for m in QUALITY:
            ranks = pl.read_parquet(runs / ds / m / "ranks.parquet")["rank"].to_numpy()
            write_run(seed7, ds, m, ranks + np.random.default_rng([k, len(m), 7]).integers(0, 4, size=N))
    stale = tmp_path / "seeds" / "13" / "runs"  # a tree of a seed not in `seeds`: ignored
    write_run(stale, DATASETS[0], "r2ec", np.full(N, 1))
    p = C.from_dict(C.to_dict(params()) | {"seeds": [2025, 7]})
    out = tmp_path / "t" / "table1.tex"
    table1(p, runs, out, tmp_path / "t" / "metrics.json", tmp_path / "t" / "sig.json")

    def test_value(root, ds, m, col):
        return json.loads((root / ds / m / "metrics.json").read_text())["test"][col]

    ds, col = "movielens-100k", "N@10"
    a = [test_value(r, ds, "r2ec", col) for r in (runs, seed7)]
    mean, std = np.mean(a), np.std(a, ddof=1)
    metrics = json.loads((tmp_path / "t" / "metrics.json").read_text())
    assert metrics[ds]["r2ec"][col] == pytest.approx(mean) and metrics[ds]["r2ec"][f"{col}_std"] == pytest.approx(std)
    row = next(line for line in out.read_text().splitlines() if line.startswith(R2EC_ROW))
    assert rf"{mean:.4f} $\pm$ {std:.4f}" in row
    md = out.with_suffix(".md").read_text()
    assert f"{mean:.4f} ± {std:.4f}" in md and "| p (seeds) |" in md and "seeds 2025, 7" in md
    assert r"$p$ (seeds) &" in out.read_text()

    sig = json.loads((tmp_path / "t" / "sig.json").read_text())
    assert sig["per_sample_seed"] == 2025 and sig["seeds"] == [2025, 7]
    across = sig["across_seeds"]
    assert across["alternative"] == "two-sided"
    for d in DATASETS:
        for c, r in across["datasets"][d].items():
            assert r["baseline"] == sig["datasets"][d][c]["baseline"] and r["seeds"] == [2025, 7]
            x = [test_value(root, d, "r2ec", c) for root in (runs, seed7)]
            y = [test_value(root, d, r["baseline"], c) for root in (runs, seed7)]
            assert r["values_a"] == pytest.approx(x) and r["values_b"] == pytest.approx(y)
            assert r["ttest_p"] == pytest.approx(ttest_rel(x, y, alternative="two-sided").pvalue)
    # the per-sample tests stay on the first seed's runs
    per_sample = sig["datasets"][ds][col]
    ranks = {m: pl.read_parquet(runs / ds / m / "ranks.parquet")["rank"].to_numpy()
             for m in ("r2ec", per_sample["baseline"])}
    assert per_sample["ttest_p"] == pytest.approx(
        ttest_rel(ndcg_at_k(ranks["r2ec"], 10), ndcg_at_k(ranks[per_sample["baseline"]], 10)).pvalue)


def test_table1_with_one_seed_tree_ignores_seeds_without_runs(tmp_path):
    runs = make_runs(tmp_path)
    out = tmp_path / "t" / "table1.tex"
    table1(C.from_dict(C.to_dict(params()) | {"seeds": [2025, 7]}), runs, out, None, tmp_path / "t" / "sig.json")
    single = tmp_path / "one" / "table1.tex"
    table1(C.from_dict(C.to_dict(params()) | {"seeds": [2025]}), runs, single)
    assert out.read_text() == single.read_text()  # no results/seeds/7: the single-seed table
    assert "across_seeds" not in json.loads((tmp_path / "t" / "sig.json").read_text())


def _marked(text: str) -> set[str]:
    return {line.split(" & ")[0].replace(r"$^{\ddagger}$", "") for line in text.splitlines()
            if r"$^{\ddagger}$ &" in line}


def test_table1_marks_rows_run_under_deviations_from_the_paper(tmp_path):
    """Under the paper profile no row is marked and there is no footnote; a deviation marks the rows of the
    methods it bears on (recpo keys: the R2ec rows; eval keys: every row) and the footnote names it."""
    runs = make_runs(tmp_path)
    root = Path(__file__).resolve().parents[1]

    def render(*overrides):
        p = C.load([root / "params.yaml", PAPER], ['datasets=["Video_Games"]', *overrides])
        out = tmp_path / "t" / "table1.tex"
        table1(p, runs, out)
        return out.read_text(), out.with_suffix(".md").read_text()

    tex, md = render()  # a subset of the paper's datasets is no deviation
    assert r"\ddagger" not in tex and "‡" not in md and "deviations" not in tex + md
    tex, md = render("recpo.lr=2.0e-05")
    r2ec = {r"R$^2$ec (zero-shot)", r"R$^2$ec w/o reasoning", r"R$^2$ec"}
    assert _marked(tex) == r2ec
    assert "| R²ec<sup>‡</sup> |" in md and "| SASRec |" in md
    assert r"\texttt{recpo.lr} = 2.0e-05 (paper 1.0e-05" in tex and "`recpo.lr` = `2.0e-05` (paper `1.0e-05`" in md
    assert md.count("` = `") == 1  # only the deviation in effect is listed
    tex, md = render("eval.max_samples=500", "sasrec.epochs=20")
    assert _marked(tex) == r2ec | {"Popularity", "Random", "GRU4Rec", "Caser", "SASRec", "TIGER"}
    assert "`eval.max_samples` = `500` (paper `0`; all rows)" in md and "(paper `200`; SASRec)" in md
    # the deviation mark is none of the significance markers
    from r2ec.report.tables import DEVIATION_MARK, MARKERS
    assert not set(DEVIATION_MARK) & {s for pair in MARKERS.values() for s in pair}


def test_table1_has_a_group_and_an_improve_row_per_backbone(tmp_path):
    """With two `backbones`, the methods that read a backbone get one group per backbone (rows from that backbone's
    tree), keys <method>@<tag> in metrics.json, and each backbone's R2ec its own Improve row and tests against the
    backbone-free baselines; TIGER (no backbone) stays in the plain LLM-based group."""
    from r2ec.config.backbones import backbone_tag
    runs = make_runs(tmp_path)  # llm.backbone's runs
    other = tmp_path / "backbones" / "tiny-random" / "runs"
    for k, ds in enumerate(DATASETS):
        base = np.random.default_rng(k).integers(1, 12, size=N)
        for m, q in (("r2ec_no_reasoning", 9), ("r2ec", 3 if ds == "Video_Games" else 14)):
            write_run(other, ds, m, base * q // 2 + 1)
    p = params()
    p = C.from_dict(C.to_dict(p) | {"backbones": [p.llm.backbone, "tiny-random"]})
    first = backbone_tag(p.llm.backbone)
    assert first == "SmolLM2-135M-Instruct.Q4_1"
    out = tmp_path / "t" / "table1.tex"
    table1(p, runs, out, tmp_path / "t" / "metrics.json", tmp_path / "t" / "sig.json")
    tex, md = parse_tex(out.read_text()), parse_md(out.with_suffix(".md").read_text())
    assert [g for g, _ in tex.groups] == ["Reference", "Traditional", "LLM-based", rf"LLM-based ({first})".replace(
        "_", r"\_"), "LLM-based (tiny-random)"]
    assert [g for g, _ in md.groups][3:] == [f"LLM-based ({first})", "LLM-based (tiny-random)"]
    assert tex.groups[2][1] == [method_label("tiger")]
    assert tex.groups[4][1] == [method_label("r2ec_no_reasoning"), method_label("r2ec")]
    metrics = json.loads((tmp_path / "t" / "metrics.json").read_text())
    assert set(metrics["Video_Games"]) == {"popularity", "random", "gru4rec", "caser", "sasrec", "tiger",
                                           f"r2ec_zeroshot@{first}", f"r2ec_no_reasoning@{first}", f"r2ec@{first}",
                                           "r2ec_no_reasoning@tiny-random", "r2ec@tiny-random"}
    sig = json.loads((tmp_path / "t" / "sig.json").read_text())
    assert sig["method"] == f"r2ec@{first}" and sig["datasets"] == sig["backbones"][first]["datasets"]
    assert sig["backbones"]["tiny-random"]["method"] == "r2ec@tiny-random"
    cols = ["H@5", "N@5", "H@10", "N@10", "H@20", "N@20"]
    for tag, root in ((first, runs), ("tiny-random", other)):
        label = {first: rf"LLM-based ({first})".replace("_", r"\_"), "tiny-random": "LLM-based (tiny-random)"}[tag]
        row = tex.rows[f"{label}: {method_label('r2ec')}"] if tag == "tiny-random" else tex.rows[method_label("r2ec")]
        for j, (d, col) in enumerate((d, c) for d in DATASETS for c in cols):
            r = sig["backbones"][tag]["datasets"][d][col]
            free = {m: run_values(runs, d, m)[col] for m in ("gru4rec", "caser", "sasrec", "tiger")}
            assert r["baseline"] == max(free, key=free.get)  # the R2ec variants are no baselines
            ours = run_values(root, d, "r2ec")[col]
            assert row[j].value == round(ours, 4)
            improve = f"{100 * (ours - free[r['baseline']]) / free[r['baseline']]:+.1f}"
            assert tex.footer[f"Improve ({tag.replace('_', chr(92) + '_')})"][j] == improve + r"\%"
            assert md.footer[f"Improve ({tag})"][j] == improve + "%"
            significant = r["significant_ttest"] and r["direction"] != "equal"
            assert row[j].marker == (("better" if r["direction"] == "higher" else "worse") if significant else "")
    # the fixture makes the two backbones' R2ec differ in direction on Games, so the checks above see both
    games = [sig["backbones"][t]["datasets"]["Video_Games"]["N@10"]["direction"] for t in (first, "tiny-random")]
    assert games == ["lower", "higher"]


def test_backbone_free_run_leaves_the_backbone_tree():
    from r2ec.config.backbones import backbone_free_run
    assert backbone_free_run(Path("results/backbones/q/runs/ml/d3"), "sasrec") == Path("results/runs/ml/sasrec")
    assert backbone_free_run(Path("r/backbones/q/seeds/7/runs/ml/d3"), "sasrec") == Path("r/seeds/7/runs/ml/sasrec")
    assert backbone_free_run(Path("results/runs/ml/d3"), "sasrec") == Path("results/runs/ml/sasrec")
