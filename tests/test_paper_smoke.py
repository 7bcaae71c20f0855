"""`make paper-smoke`: its Snakemake DAG (two backbone groups, every LLM job as 2 DeepSpeed processes), the check
of its evidence, and (slow) the whole run."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from r2ec.errors import UserError
from r2ec.pipeline import smoke

ROOT = Path(__file__).resolve().parents[1]
TAGS = ("tiny-random-gemma2", "tiny-random-qwen2")
LLM = ("bigrec", "d3", "langptune", "r2ec_zeroshot", "r2ec_no_reasoning", "r2ec")


def test_paper_smoke_dag_has_two_backbone_groups_of_two_process_jobs(tmp_path):
    smoke.prepare(ROOT, tmp_path / "w")
    cmd = smoke.command(ROOT, tmp_path / "w", 2)
    r = subprocess.run([*cmd, "-n", "-p"], capture_output=True, text=True, timeout=300, cwd=ROOT,
                       env={**os.environ, "R2EC_DVC_SYNC": "0"})
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    jobs = {k: int(v) for k, v in re.findall(r"^(\w+)\s+(\d+)$", r.stdout, flags=re.M)}
    assert jobs["backbone"] == jobs["item_table"] == 2 and jobs["train_r2ec"] == 6
    assert jobs["train_bigrec"] == jobs["train_d3"] == jobs["train_langptune"] == 2
    assert jobs["train_baseline"] == 6  # the backbone-free baselines once
    commands = re.findall(r"^(.* -m r2ec train .*)$", r.stdout, flags=re.M)
    llm = [c for c in commands if re.search(r"--method (bigrec|d3|langptune|r2ec\w*) ", c)]
    assert len(llm) == 12
    for c in llm:
        assert "DS_ACCELERATOR=cpu torchrun --standalone --nproc_per_node 2 " in c
        assert "ACCELERATE_DEEPSPEED_CONFIG_FILE=configs/accelerate/ds_config_zero2.json" in c
    qwen = [c for c in llm if "-S llm.backbone=tiny-random-qwen2" in c]
    assert len(qwen) == 6 and all("--out results/backbones/tiny-random-qwen2/runs/movielens-100k/" in c for c in qwen)


def _fake_run(work: Path, world: str = smoke.WORLD, groups: tuple[str, ...] = TAGS) -> None:
    smoke.prepare(ROOT, work)
    for tree in ("", "backbones/tiny-random-qwen2/"):
        for m in LLM:
            f = work / "results" / "logs" / "train" / f"{tree}movielens-100k" / f"{m}.log"
            f.parent.mkdir(parents=True, exist_ok=True)
            f.write_text(f"INFO {m}: {world}\nINFO {m}: {world}\n")
    rows = "".join(rf"\multicolumn{{7}}{{l}}{{\textit{{LLM-based ({g})}}}} \\" + "\n" for g in groups)
    (work / "results" / "table1.tex").write_text(rows)


def test_check_reads_the_logs_and_the_table(tmp_path):
    _fake_run(tmp_path / "ok")
    out = smoke.check(tmp_path / "ok")
    assert out["llm_logs"] == {t: len(LLM) for t in TAGS}
    assert out["groups"] == [f"LLM-based ({t})" for t in TAGS]
    _fake_run(tmp_path / "one", world="world size 1, engine accelerate")
    with pytest.raises(UserError, match="without 'world size 2, engine deepspeed'"):
        smoke.check(tmp_path / "one")
    _fake_run(tmp_path / "group", groups=TAGS[:1])
    with pytest.raises(UserError, match="expected one per backbone"):
        smoke.check(tmp_path / "group")


@pytest.mark.slow
def test_make_paper_smoke_end_to_end(tmp_path):
    """The whole run (about 10 minutes on 2 cores): Table 1 with two backbone groups from 2-process ZeRO-2 jobs."""
    raw = ROOT / "results" / "raw"
    args = ["--raw", str(raw)] if raw.is_dir() else []
    r = subprocess.run([sys.executable, "-m", "r2ec", "paper-smoke", "--work", str(tmp_path / "w"), *args],
                       capture_output=True, text=True, timeout=1800, cwd=ROOT)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "paper-smoke: ok" in r.stdout
    metrics = json.loads((tmp_path / "w" / "results" / "metrics.json").read_text())["movielens-100k"]
    assert {f"r2ec@{t}" for t in TAGS} <= set(metrics)
    shutil.rmtree(tmp_path / "w", ignore_errors=True)
