"""DVC experiments for real, on the tiny Amazon fixture: `dvc repro`, then `dvc exp run -S recpo.beta=0.1` re-runs
only the R2ec stages and the report, its Table 1 numbers show in `dvc exp show`, and `dvc plots show` renders the
training curves. Slow (two tiny pipeline runs)."""

from __future__ import annotations

import csv
import io
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from fixtures.data_fixtures import serve
from test_pipeline_smoke import _fixture, _tiny_params

ROOT = Path(__file__).resolve().parents[1]
R2EC_STAGES = {"train_r2ec_contrastive@Video_Games", "train_r2ec@Video_Games-r2ec"}
REPORT_STAGES = {"table1", "table2", "learning_figure", "report", "latency",
                 *(f"sweep_figure@{k}" for k in ("beta", "temperature", "group_size"))}


@pytest.mark.slow
def test_dvc_experiment_round_trip(tmp_path):
    remote, work = tmp_path / "remote", tmp_path / "work"
    _fixture(remote)
    work.mkdir()
    for name in ("dvc.yaml", "pyproject.toml", ".gitignore"):
        shutil.copy(ROOT / name, work / name)
    shutil.copytree(ROOT / "src", work / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}", OMP_NUM_THREADS="1",
               GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t", GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@t")

    def run(*cmd):
        r = subprocess.run(list(cmd), cwd=work, capture_output=True, text=True, timeout=1200, env=env)
        assert r.returncode == 0, " ".join(cmd) + "\n" + r.stdout[-3000:] + r.stderr[-3000:]
        return r.stdout

    dvc = (sys.executable, "-m", "dvc")
    run("git", "init", "-q")
    run(*dvc, "init", "-q")
    shutil.copy(ROOT / ".dvc/config", work / ".dvc/config")
    with serve(remote) as (base, _state):
        p = _tiny_params(base)
        p["baselines"] = ["sasrec", "popularity", "random"]
        p["r2ec_variants"] = ["r2ec"]
        p["latency"].update(queries=2, batch_sizes=[1, 2], methods=["sasrec", "r2ec"])
        (work / "params.yaml").write_text(yaml.safe_dump(p))
        first = run(*dvc, "repro")
        assert "Running stage 'train_baseline@Video_Games-popularity'" in first
        table1 = (work / "results/table1.tex").read_text()
        assert "Popularity" in table1 and "Random" in table1 and r"\textit{Reference}" in table1
        assert (work / "results/significance.json").exists() and (work / "results/report.md").exists()
        run("git", "add", "-A")
        run("git", "commit", "-qm", "baseline")
        exp = run(*dvc, "exp", "run", "-S", "recpo.beta=0.1")
    stages = set(re.findall(r"Running stage '([^']+)'", exp))
    assert R2EC_STAGES <= stages and stages <= R2EC_STAGES | REPORT_STAGES, exp

    rows = list(csv.DictReader(io.StringIO(run(*dvc, "exp", "show", "--csv"))))
    beta = [r for r in rows if r.get("recpo.beta") == "0.1"]
    assert beta and [r for r in rows if r.get("recpo.beta") == "0.05"], rows[0].keys()
    col = next(c for c in rows[0] if c.endswith("Video_Games.r2ec.N@10"))
    assert beta[0][col] not in ("", "-"), beta[0]  # the experiment's Table 1 number, from results/metrics.json

    run(*dvc, "plots", "show", "-o", "plots_html")
    html = (work / "plots_html/index.html").read_text()
    assert "RecPO train reward" in html and "reasoning" in html
