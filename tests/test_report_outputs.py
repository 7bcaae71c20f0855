"""Training-dynamics, sweep and dvc-plots outputs; latency timing and Table 4; the generated report.md.

Everything runs on literal logs, a tiny pattern dataset and stand-in scorers / recommenders (no LLM); the real
R2ec paths are exercised end to end by tests/test_experiments.py.
"""

import json
import time

import polars as pl
import pytest
import torch

from fixtures.data_fixtures import pattern_dataset
from r2ec import config as C
from r2ec.errors import UserError
from r2ec.report.figures import dynamics_figure, sweep_dir, sweep_figure, write_plot_data
from r2ec.report.latency import hardware, measure, table4, time_scorer
from r2ec.report.report import write_report


def _write(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def _recpo_run(runs, name, advantage, slope):
    d = runs / "ml" / name
    _write(d / "train_log.jsonl", [{"step": i, "reward": 0.2 + slope * i, "reasoning_len": 10 + i, "item_loss": 2.0}
                                   for i in range(6)])
    _write(d / "valid_log.jsonl", [{"step": 0, "N@10": 0.1}, {"step": 5, "N@10": 0.1 + slope}])
    (d / "config.json").write_text(json.dumps({"recpo": {"advantage": advantage}}))


def test_dynamics_figure_draws_the_step_diagnostics(tmp_path, monkeypatch):
    import r2ec.report.figures as F
    runs = tmp_path / "runs"
    _recpo_run(runs, "r2ec_rloo", "rloo", 0.02)  # a log without the diagnostics: its panels stay empty
    d = runs / "ml" / "r2ec"
    _write(d / "train_log.jsonl", [{"step": i, "reward": 0.2, "reasoning_len": 24, "flat_group_frac": 0.5,
                                    "cut_frac": 1.0, "kl_ref": 0.01 * i, "clip_frac": 0.0, "entropy": 3.0 - 0.1 * i}
                                   for i in range(6)])
    _write(d / "valid_log.jsonl", [{"step": 0, "N@10": 0.1}])
    (d / "config.json").write_text(json.dumps({"recpo": {"advantage": "grpo"}}))
    figs = []
    real = F._save
    monkeypatch.setattr(F, "_save", lambda fig, out: (figs.append(fig), real(fig, out))[1])
    out = F.dynamics_figure(runs, ["ml"], tmp_path / "dyn.png")
    assert _is_png_pdf(out)
    axes = figs[0].axes
    assert len(axes) == 6
    diag = {a.get_title(): [ln.get_label() for ln in a.get_lines()] for a in axes[3:]}
    assert diag == {"ml: reward signal": ["R²ec (GRPO): flat_group_frac", "R²ec (GRPO): cut_frac"],
                    "ml: policy movement": ["R²ec (GRPO): kl_ref", "R²ec (GRPO): clip_frac"],
                    "ml: policy entropy": ["R²ec (GRPO)"]}


def _is_png_pdf(paths):
    return paths[0].read_bytes()[:4] == b"\x89PNG" and paths[1].read_bytes()[:4] == b"%PDF"


def test_dynamics_figure_grpo_vs_rloo_and_plot_csvs(tmp_path):
    runs = tmp_path / "runs"
    _recpo_run(runs, "r2ec", "grpo", 0.01)
    _recpo_run(runs, "r2ec_rloo", "rloo", 0.02)
    out = dynamics_figure(runs, ["ml", "other"], tmp_path / "f" / "dyn.png")  # "other": no run, says so
    assert [p.name for p in out] == ["dyn.png", "dyn.pdf"] and _is_png_pdf(out)
    train, valid = write_plot_data(runs, "ml", tmp_path / "plots")
    assert train.read_text().splitlines()[:2] == ["step,reward,reasoning_len,item_loss", "0,0.2,10,2.0"]
    assert valid.read_text().splitlines() == ["step,N@10", "0,0.1", "5,0.11"]
    empty = write_plot_data(runs, "none", tmp_path / "p2")  # header-only files keep the stage outputs present
    assert empty[0].read_text() == "step,reward,reasoning_len,item_loss\n"


def test_sweep_figure_reads_the_sweep_runs_present(tmp_path):
    runs = tmp_path / "runs"
    for v, n in ((0.0, 0.1), (0.5, 0.3)):  # 1.0 has no run: left out
        d = runs / "ml" / sweep_dir("beta", v)
        d.mkdir(parents=True)
        (d / "metrics.json").write_text(json.dumps({"test": {"N@10": n, "H@10": 2 * n}}))
    assert sweep_dir("beta", 0.5) == "r2ec@beta=0.5"
    out = sweep_figure(runs, ["ml"], "beta", (0.0, 0.5, 1.0), (10,), tmp_path / "s.png")
    assert _is_png_pdf(out)
    with pytest.raises(ValueError, match="unknown sweep"):
        sweep_figure(runs, ["ml"], "lr", (1,), (10,), tmp_path / "x.png")


def _dataset():
    items = pl.DataFrame({"item_id": list(range(1, 31)), "source_id": [str(i) for i in range(30)],
                          "title": [f"Item {i}" for i in range(1, 31)]})
    return pattern_dataset(items, hist=3, n_users=20, seq_len=6)


def test_time_scorer_per_request_and_warmup():
    calls = []

    def slow(batch):
        calls.append(batch.height)
        time.sleep(0.01 * batch.height)
        return torch.zeros(batch.height, 31)

    samples = _dataset().split("test").head(5)
    per = time_scorer(slow, samples, 2, 20, warmup=1)
    assert calls == [2, 2, 2, 1] and len(per) == 3  # one untimed warm-up batch, then 2 + 2 + 1 requests
    assert all(0.009 < t < 0.05 for t in per)


def test_latency_table_times_methods_with_runs(tmp_path):
    ds = _dataset()
    runs = tmp_path / "runs"
    for m in ("sasrec", "r2ec"):
        (runs / ds.name / m).mkdir(parents=True)
        (runs / ds.name / m / "metrics.json").write_text("{}")
    seen = []

    def factory(method, run_dir, d, p, cache):
        seen.append((method, run_dir.name))
        return lambda batch: torch.rand(batch.height, d.n_items + 1)

    p = C.load("params.yaml", ["latency.queries=3", "latency.batch_sizes=[1,2]", "latency.warmup=0",
                               "latency.methods=[r2ec,caser,sasrec]"])
    res = measure(p, runs, ds, tmp_path, timers={"sasrec": factory, "r2ec": factory, "caser": factory})
    assert list(res["methods"]) == ["r2ec", "sasrec"] and seen == [("r2ec", "r2ec"), ("sasrec", "sasrec")]
    assert res["queries"] == 3 and res["methods"]["r2ec"]["2"]["batches"] == 2  # 2 + 1
    assert "threads" in res["hardware"] and res["hardware"] == hardware()
    text = table4(res, tmp_path / "t4.tex")
    assert r"R$^2$ec &" in text and r"$\pm$" in text and "batch 2" in text
    assert "| SASRec |" in (tmp_path / "t4.md").read_text()
    assert json.loads((tmp_path / "t4.json").read_text())["queries"] == 3
    with pytest.raises(UserError, match="none of"):
        measure(p, tmp_path / "empty", ds, tmp_path, timers={"sasrec": factory})


def test_report_embeds_tables_figures_and_examples(tmp_path):
    ds = _dataset()
    data = tmp_path / "data" / "Video_Games"  # the run's dataset is its directory name
    data.mkdir(parents=True)
    ds.items.write_parquet(data / "items.parquet")
    for s, df in ds.splits.items():
        df.write_parquet(data / f"{s}.parquet")
    runs = tmp_path / "runs"
    (runs / "Video_Games" / "r2ec").mkdir(parents=True)
    (runs / "Video_Games" / "r2ec" / "metrics.json").write_text("{}")
    res = tmp_path / "results"
    (res / "figures").mkdir(parents=True)
    (res / "figures" / "r2ec_learning.png").write_bytes(b"\x89PNG")
    (res / "table1.md").write_text("**Table 1.** x\n\n| Method |\n")
    (res / "significance.json").write_text(json.dumps({
        "alternative": "two-sided", "marker_test": "ttest", "alpha": 0.05, "datasets": {"Video_Games": {"N@10": {
            "baseline": "sasrec", "mean_a": 0.3, "mean_b": 0.2, "direction": "higher", "ttest_p": 0.01,
            "wilcoxon_p": 0.02}}}}))
    calls = []

    def fake(run_dir, titles, k, data_dir):
        calls.append((run_dir.name, tuple(titles), k, data_dir.name))
        return {"reasoning": "likes sequels", "items": [(i, f"Item {i}", 1.0) for i in range(1, k + 1)]}

    p = C.load("params.yaml", ["datasets=[Video_Games]", "report.examples=2", "eval.max_samples=0"])
    text = write_report(p, res, runs, tmp_path / "data", res / "report.md", recommender=fake)
    assert text == (res / "report.md").read_text()
    assert "## Main results" in text and "**Table 1.** x" in text and "## Ablations" not in text  # no table2.md
    assert "| Video_Games | N@10 | sasrec | 0.3000 | 0.2000 | higher | 0.01 | 0.02 |" in text
    assert "![r2ec_learning](figures/r2ec_learning.png)" in text
    first = ds.split("test").row(0, named=True)
    assert len(calls) == 2 and calls[0][0] == "r2ec" and calls[0][2] == 5 and calls[0][3] == "Video_Games"
    assert calls[0][1] == tuple(f"Item {i}" for i in first["history_item_ids"])
    assert text.count("> likes sequels") == 2 and f"*Item {first['target_item_id']}*" in text
    if first["target_item_id"] <= 5:
        assert f"{first['target_item_id']}. Item {first['target_item_id']}  ← target" in text
    no_examples = write_report(C.load("params.yaml", ["datasets=[Video_Games]", "report.examples=0"]), res, runs,
                               tmp_path / "data", res / "r2.md", recommender=fake)
    assert "Example reasonings" not in no_examples and len(calls) == 2
