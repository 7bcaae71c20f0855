"""End-to-end smoke run of the real pipeline (Snakemake -> python -m r2ec stages) on a tiny Amazon fixture.

The fixture is served over HTTP from 127.0.0.1 so the real download code runs; the params file is the real
params.yaml with a handful of keys shrunk. Afterwards a dry run shows that changing one SASRec hyperparameter
re-runs only SASRec and the table.
"""

from __future__ import annotations

import importlib.util
import json
import random
import re
import shutil
import subprocess
import sys
from pathlib import Path

import polars as pl
import yaml

from r2ec.report.significance import paired_ranks, paired_tests

from fixtures.data_fixtures import meta_item, ms, serve, write_csv_gz, write_jsonl_gz

ROOT = Path(__file__).resolve().parents[1]
CAT = "Video_Games"


def _fixture(remote: Path, n_users=40, n_items=30, seed=0):
    rng = random.Random(seed)
    rows = []
    for u in range(n_users):
        start = rng.randrange(0, 200)
        for j in range(rng.randrange(4, 9)):
            item = (u + j) % n_items  # a learnable "next item" pattern
            rows.append((f"U{u:03d}", f"B{item:04d}", float(rng.randint(1, 5)),
                         ms("2023-01-01", (start + j) * 86400)))
    rows.sort(key=lambda r: r[3])
    write_csv_gz(remote / "benchmark/5core/rating_only" / f"{CAT}.csv.gz", rows)
    write_jsonl_gz(remote / "raw/meta_categories" / f"meta_{CAT}.jsonl.gz",
                   [meta_item(f"B{i:04d}", title=f"Game number {i}") for i in range(n_items)])


def _tiny_params(base_url: str) -> dict:
    p = yaml.safe_load((ROOT / "params.yaml").read_text())
    p["datasets"] = [CAT]
    p["data"].update(base_url=base_url, min_items=10)
    for m in p["baselines"]:
        if m not in ("popularity", "random"):  # the reference rows train nothing
            p[m].update(epochs=2, patience=1, hidden=16, batch_size=64)
    p["sasrec"].update(epochs=30, patience=30)  # long enough to learn the fixture's next-item pattern (seconds)
    p["eval"].update(max_samples=10, valid_max_samples=8)
    # R2ec on a tiny random LM built in memory (no download): 2 RecPO steps
    p["r2ec_variants"] = ["r2ec_zeroshot", "r2ec"]
    p["llm"].update(backbone="tiny-random", max_prompt_tokens=128)
    p["lora"]["last_layers"] = 1  # the tiny model has 2 decoder layers
    p["recpo"].update(steps=2, eval_every=2, checkpoint_every=1, item_refresh_every=2, group_size=2, batch_size=2,
                      max_reasoning_tokens=4, item_batch_size=32, eval_batch_size=8, gen_batch_size=8, max_minutes=0,
                      uniform_negatives=2, valid_max_samples=8)
    p["contrastive"].update(steps=2, eval_every=2, item_refresh_every=2, batch_size=2, uniform_negatives=2,
                            max_minutes=0, warmup_steps=0)
    # the LLM baselines on the same tiny LM: a few SFT / alternating steps (langptune's retriever is the real
    # all-MiniLM-L6-v2 from its PyPI package, on 30 items)
    p["bigrec"].update(train_samples=16, epochs=1, batch_size=4, eval_every=4, max_minutes=0, warmup_steps=0,
                       decode_batch_size=8, embed_batch_size=32)
    p["d3"].update(decode_batch_size=8)
    p["langptune"].update(profile_tokens=4, steps=1, eval_every=1, batch_size=2, num_emb_updates=1,
                          retriever_batch_size=4, profile_pool=8, max_minutes=0, eval_batch_size=8)
    return p


def _snakemake(workdir: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "-d", str(workdir),
           "--cores", "2", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=900)


def test_pipeline_end_to_end(tmp_path):
    remote, work = tmp_path / "remote", tmp_path / "work"
    _fixture(remote)
    work.mkdir()
    with serve(remote) as (base, _state):
        (work / "params.yaml").write_text(yaml.safe_dump(_tiny_params(base)))
        r = _snakemake(work, "results/table1.tex", "results/table3.tex", "results/figures/r2ec_learning.png")
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    png = work / "results/figures/r2ec_learning.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.with_suffix(".pdf").exists()

    table1 = (work / "results/table1.tex").read_text()
    for name in ("SASRec", "GRU4Rec", "Caser", "BigRec", "D$^3$", "LangPTune", r"R$^2$ec (zero-shot)", r"\textbf{"):
        assert name in table1
    # R2ec's own row (run under CPU-scale deviations: marked with a double dagger, listed in the footnote)
    assert re.search(r"^R\$\^2\$ec(\$\^\{\\ddagger\}\$)? &", table1, flags=re.M), table1
    assert "Games" in (work / "results/table3.tex").read_text()
    for m in ("sasrec", "gru4rec", "caser", "bigrec", "d3", "langptune", "r2ec_zeroshot", "r2ec_no_reasoning",
              "r2ec"):
        metrics = json.loads((work / f"results/runs/{CAT}/{m}/metrics.json").read_text())
        assert metrics["test"]["n_samples"] == 10 and 0.0 <= metrics["test"]["N@10"] <= 1.0
    assert json.loads((work / f"results/data/{CAT}/stats.json").read_text())["items"] == 30
    # a method that learns beats Random on the same 10 test samples (one-sided paired Wilcoxon on N@5)
    _, learned, chance = paired_ranks(work / f"results/runs/{CAT}/sasrec", work / f"results/runs/{CAT}/random")
    test = paired_tests(learned, chance, "N@5", alternative="greater")
    assert test["mean_a"] > test["mean_b"] and test["wilcoxon_p"] < 0.05, test

    log = [json.loads(line) for line in (work / f"results/runs/{CAT}/r2ec/train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [0, 1] and all("reward" in r for r in log)
    # r2ec started from the contrastive run's adapter (recpo.warm_start), which therefore ran first
    r2ec_log = (work / f"results/logs/train/{CAT}/r2ec.log").read_text()
    assert "warm start from" in r2ec_log and "r2ec_no_reasoning/best" in r2ec_log

    # changing a SASRec hyperparameter re-runs only SASRec and the table
    p = yaml.safe_load((work / "params.yaml").read_text())
    p["sasrec"]["lr"] = 0.005
    (work / "params.yaml").write_text(yaml.safe_dump(p))
    r = _snakemake(work, "-n", "results/table1.tex", "results/table3.tex")
    assert r.returncode == 0, r.stderr[-3000:]
    jobs = dict(re.findall(r"^(\w+)\s+(\d+)$", r.stdout, flags=re.M))
    jobs.pop("total", None)
    assert jobs == {"train_baseline": "1", "table1": "1"}, r.stdout
    assert f"wildcards: tree=, dataset={CAT}, method=sasrec" in r.stdout  # tree '': the first seed's runs

    # changing recpo.beta re-runs the trained R2ec variants and the table, not the data or the baselines
    p["sasrec"]["lr"] = 0.001
    p["recpo"]["beta"] = 0.1
    (work / "params.yaml").write_text(yaml.safe_dump(p))
    r = _snakemake(work, "-n", "results/table1.tex", "results/table3.tex")
    jobs = dict(re.findall(r"^(\w+)\s+(\d+)$", r.stdout, flags=re.M))
    jobs.pop("total", None)
    assert jobs == {"train_r2ec": "3", "table1": "1"}, r.stdout  # zero-shot, contrastive, r2ec

    if importlib.util.find_spec("deepspeed") is not None:  # `make test` installs it
        p["recpo"]["beta"] = 0.05
        (work / "params.yaml").write_text(yaml.safe_dump(p))
        _launch_profile_reruns_the_zero_shot_job_identically(work)


def _launch_profile_reruns_the_zero_shot_job_identically(work: Path) -> None:
    """Under configs/profiles/zero2-cpu2.yaml the workflow starts the LLM job as 2 torchrun processes under
    DeepSpeed ZeRO-2; the sharded evaluation gives the single process's ranks. (The job's command is one of its
    params: Snakemake then counts the single-process run as out of date.)"""
    shutil.copytree(ROOT / "configs", work / "configs", dirs_exist_ok=True)  # the profile names its files relatively
    run = work / f"results/runs/{CAT}/r2ec_zeroshot"
    before = pl.read_parquet(run / "ranks.parquet")
    r = _snakemake(work, "--configfile", str(ROOT / "configs/profiles/zero2-cpu2.yaml"), "--force",
                   str(run.relative_to(work) / "metrics.json"))
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    log = (work / f"results/logs/train/{CAT}/r2ec_zeroshot.log").read_text()
    assert log.count("world size 2, engine deepspeed") == 2, log[-3000:]  # one line per process
    assert pl.read_parquet(run / "ranks.parquet").equals(before)


def test_cli_reports_bad_params_cleanly(tmp_path):
    r = subprocess.run([sys.executable, "-m", "r2ec", "check-params", "--params", str(ROOT / "params.yaml"),
                        "-S", "sasrec.lrr=1"], capture_output=True, text=True)
    assert r.returncode == 2
    assert "unknown key sasrec.lrr" in r.stderr and "Traceback" not in r.stderr
    r = subprocess.run([sys.executable, "-m", "r2ec", "train", "--method", "sasrec", "--data",
                        str(tmp_path / "missing"), "--out", str(tmp_path / "run"), "--params",
                        str(ROOT / "params.yaml")], capture_output=True, text=True)
    assert r.returncode == 2 and "prepared dataset directory not found" in r.stderr
