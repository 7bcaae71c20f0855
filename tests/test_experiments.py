"""The card's three commands share one set of results, for real on the tiny Amazon fixture:
`snakemake` (rule all) -> `git commit` -> `dvc exp run -S recpo.beta=0.1` re-runs only the stages that read `recpo`
and what reads them, while every other run stays in place with its bytes; `dvc exp show` has the row, `dvc exp apply`
brings it back, Snakemake then has nothing to do. And `dvc repro` on a fresh copy leaves Snakemake nothing to do."""

from __future__ import annotations

import contextlib
import csv
import io
import os
import re
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import yaml

from fixtures.data_fixtures import serve
from test_pipeline_smoke import _fixture, _tiny_params

ROOT = Path(__file__).resolve().parents[1]
CAT = "Video_Games"
RECPO_STAGES = {f"train_r2ec-{CAT}-r2ec_no_reasoning", f"train_r2ec-{CAT}-r2ec"}
READERS = {"table1", "learning_figure", "report"}  # what reads the R2ec runs (rule all)
NOTHING_TO_DO = "Nothing to be done"


def _project(tmp: Path, base: str) -> tuple[Path, dict]:
    """A git + DVC project holding the workflow and a tiny params.yaml, its dvc.yaml generated from the rules."""
    work = tmp / "work"
    work.mkdir()
    for name in ("Snakefile", ".gitignore", ".dvcignore"):
        shutil.copy(ROOT / name, work / name)
    shutil.copytree(ROOT / "workflow", work / "workflow", )
    p = _tiny_params(base)
    p.update(baselines=["sasrec", "popularity", "random"], llm_baselines=[], r2ec_variants=["r2ec"])
    (work / "params.yaml").write_text(yaml.safe_dump(p))
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}", OMP_NUM_THREADS="1",
               GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t", GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@t")
    run = _runner(work, env)
    run("git", "init", "-q")
    run(sys.executable, "-m", "dvc", "init", "-q")
    shutil.copy(ROOT / ".dvc/config", work / ".dvc/config")
    run(sys.executable, "-m", "r2ec", "dvc-yaml")
    run("git", "add", "-A")
    run("git", "commit", "-qm", "project")
    return work, env


@contextlib.contextmanager
def _tiny_project(tmp: Path):
    """(work, run) for a tiny git + DVC project whose download is served from 127.0.0.1 meanwhile."""
    _fixture(tmp / "remote")
    with serve(tmp / "remote") as (base, _state):
        work, env = _project(tmp, base)
        yield work, _runner(work, env)


def _runner(work: Path, env: dict):
    def run(*cmd, check=True):
        r = subprocess.run(list(cmd), cwd=work, capture_output=True, text=True, timeout=900, env=env)
        if check:
            assert r.returncode == 0, " ".join(map(str, cmd)) + "\n" + r.stdout[-3000:] + r.stderr[-3000:]
        return r.stdout + r.stderr
    return run


def _files(work: Path, keep) -> dict[str, bytes]:
    return {str(f.relative_to(work)): f.read_bytes()
            for f in sorted((work / "results/runs").rglob("*")) if f.is_file() and keep(f)}


class _Watch(threading.Thread):
    """Polls that every watched file exists, while a command runs."""

    def __init__(self, paths):
        super().__init__(daemon=True)
        self.paths, self.missing, self.stop = list(paths), set(), threading.Event()

    def run(self):
        while not self.stop.is_set():
            self.missing |= {str(p) for p in self.paths if not p.exists()}
            self.stop.wait(0.1)


def test_snakemake_then_dvc_experiment_reruns_only_recpo_stages(tmp_path):
    with _tiny_project(tmp_path) as (work, run):
        dvc = (sys.executable, "-m", "dvc")
        built = run(sys.executable, "-m", "snakemake", "--cores", "2")
        assert "dvc-sync: recorded" in built, built[-2000:]
        assert "up to date" in run(*dvc, "status", "dvc.yaml")  # the lock records what Snakemake built
        run("git", "add", "-A")
        run("git", "commit", "-qm", "results")

        others = _files(work, lambda f: "/r2ec" not in str(f))
        assert f"results/runs/{CAT}/sasrec/ranks.parquet" in others
        watch = _Watch([work / f for f in others])
        watch.start()
        try:
            exp = run(*dvc, "exp", "run", "-S", "recpo.beta=0.1")
        finally:
            watch.stop.set()
            watch.join()
        ran = set(re.findall(r"Running stage '([^']+)'", exp))
        assert RECPO_STAGES <= ran <= RECPO_STAGES | READERS, exp[-3000:]
        assert not watch.missing, sorted(watch.missing)
        assert _files(work, lambda f: "/r2ec" not in str(f)) == others  # byte-identical, all present

        rows = list(csv.DictReader(io.StringIO(run(*dvc, "exp", "show", "--csv"))))
        col = next(c for c in rows[0] if c.endswith(f"{CAT}.r2ec.N@10"))
        exps = [r for r in rows if r["Experiment"] and r.get("recpo.beta") == "0.1"]
        assert len(exps) == 1 and exps[0][col] not in ("", "-"), rows
        # the workspace is the experiment's: Snakemake agrees nothing is left to do
        assert NOTHING_TO_DO in run(sys.executable, "-m", "snakemake", "--cores", "2", "-n")

        # back to the baseline's results, then the experiment's again
        run("git", "checkout", "--", ".")
        run(*dvc, "checkout", "dvc.yaml")
        assert yaml.safe_load((work / "params.yaml").read_text())["recpo"]["beta"] == 0.05
        assert "up to date" in run(*dvc, "status", "dvc.yaml")
        run(*dvc, "exp", "apply", exps[0]["Experiment"])
        assert yaml.safe_load((work / "params.yaml").read_text())["recpo"]["beta"] == 0.1
        assert "up to date" in run(*dvc, "status", "dvc.yaml")
        assert (work / "results/table1.tex").exists() and _files(work, lambda f: "/r2ec" not in str(f)) == others


def test_dvc_repro_leaves_snakemake_nothing_to_do(tmp_path):
    with _tiny_project(tmp_path) as (work, run):
        out = run(sys.executable, "-m", "dvc", "repro")
        assert f"Running stage 'train_baseline-{CAT}-popularity'" in out
        assert "table2" not in out  # the paper's long targets are their own pipeline file
        assert (work / "results/table1.tex").exists() and (work / "results/report.md").exists()
        assert NOTHING_TO_DO in run(sys.executable, "-m", "snakemake", "--cores", "2", "-n")
        run(sys.executable, "-m", "dvc", "push")  # works out of the box: prepared data and checkpoints
        assert any((work / ".dvc-remote").rglob("*")), "nothing pushed to the default remote"
        # one SASRec hyperparameter re-runs SASRec and what reads it, nothing upstream or beside it
        p = yaml.safe_load((work / "params.yaml").read_text())
        p["sasrec"]["lr"] = 0.005
        (work / "params.yaml").write_text(yaml.safe_dump(p))
        dry = run(sys.executable, "-m", "dvc", "repro", "--dry")
    ran = set(re.findall(r"Running stage '([^']+)'", dry))
    assert f"train_baseline-{CAT}-sasrec" in ran and ran <= {f"train_baseline-{CAT}-sasrec", *READERS}, dry
