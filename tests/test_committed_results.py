"""The default job's small outputs committed under results/ (table1.md, metrics.json, report.md, figures) agree
with each other, with the method registry and with the current default params.yaml, so that what a reader opens
without running anything is what `make table1` makes. After a change of the defaults: `make table1`, then commit
those files (DVC leaves them to git: ``cache: false`` in dvc.yaml)."""

import json
import re
from pathlib import Path

from r2ec import config as C
from r2ec.report.tables import OURS, deviation_note, plain_name

from latex_table import parse_md

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "results"
DATASET = "movielens-100k"


def test_committed_table_shows_the_committed_metrics():
    metrics = json.loads((RESULTS / "metrics.json").read_text())
    assert list(metrics) == [DATASET]
    table = parse_md((RESULTS / "table1.md").read_text())
    methods = list(metrics[DATASET])
    assert [m for _, ms in table.groups for m in ms] == [plain_name(m) for m in methods]
    for m in methods:
        cells = table.rows[plain_name(m)]
        for (dataset, col), cell in zip(table.columns, cells):
            assert dataset == "MovieLens-100K" and cell.value == round(metrics[DATASET][m][col], 4), (m, col)
    assert {metrics[DATASET][m]["n_samples"] for m in methods} == {C.load(ROOT / "params.yaml").eval.max_samples}


def test_committed_table_was_made_under_the_current_defaults():
    """Its deviation footnote is the one the current params.yaml gives: a default changed on a registered key
    (every CPU-scale setting is one) without `make table1` and a commit of results/ fails here."""
    p = C.load(ROOT / "params.yaml")
    metrics = json.loads((RESULTS / "metrics.json").read_text())
    _, (_, md_note) = deviation_note(p, list(metrics[DATASET]))
    assert md_note and md_note in (RESULTS / "table1.md").read_text()
    assert set(p.datasets) == set(metrics) and OURS in metrics[DATASET]


def test_committed_report_carries_the_table_and_figures():
    report = (RESULTS / "report.md").read_text()
    table = (RESULTS / "table1.md").read_text().strip()
    assert table in report
    figures = re.findall(r"!\[[^\]]*\]\((figures/[^)]+\.png)\)", report)
    assert "figures/r2ec_learning.png" in figures
    for f in figures:
        assert (RESULTS / f).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", f


def test_readme_shows_the_committed_results():
    """The README's results excerpt quotes results/metrics.json (N@10, H@10) and shows the learning figure."""
    readme = (ROOT / "README.md").read_text()
    metrics = json.loads((RESULTS / "metrics.json").read_text())[DATASET]
    rows = {name: (n, h) for name, n, h in
            re.findall(r"^\| ([^|]+?) \| (0\.\d{4}) \| (0\.\d{4}) \|$", readme, flags=re.M)}
    assert len(rows) == len(metrics)
    for m, v in metrics.items():
        assert rows[plain_name(m)] == (f"{v['N@10']:.4f}", f"{v['H@10']:.4f}"), m
    assert "](results/figures/r2ec_learning.png)" in readme
