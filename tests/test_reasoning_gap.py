"""benchmarks/reasoning_gap.py end to end on the tiny random Llama: arms warm-started from a finished
w/o-reasoning run, tested against it and Popularity, resumed without retraining."""

import dataclasses
import json

import shutil

import polars as pl
import pytest
import yaml

from r2ec.baselines.reference import train_method
from r2ec.config import ReadoutCfg, to_dict
from r2ec.errors import UserError
from r2ec.recpo.trainer import train_r2ec
from recpo_fixtures import load_benchmark, tiny_params, with_recpo, write_tiny_dataset


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    """A finished job's run folder (r2ec_no_reasoning with a fitted readout, popularity) and its params file."""
    root = tmp_path_factory.mktemp("gap")
    ds, data = write_tiny_dataset(root)
    p = with_recpo(tiny_params(steps=0), warm_start="r2ec_no_reasoning")
    p = dataclasses.replace(p, readout=ReadoutCfg(rank=2, train_users=6, epochs=30, lr=0.05, distill_users=4,
                                                  distill_ridge=0.5))
    (root / "params.yaml").write_text(yaml.safe_dump(to_dict(p)))
    runs = root / "runs"
    train_r2ec("r2ec_no_reasoning", ds, p, runs / "r2ec_no_reasoning", None, progress=False, dvclive=False)
    train_method("popularity", ds, p, runs / "popularity", root / "cache", progress=False)
    return root, data, runs


def _args(root, data, runs, *extra):
    return ["--params", str(root / "params.yaml"), "--data", str(data), "--cache", "", "--runs", str(runs),
            "--work", str(root / "work"), "--out", str(root / "res" / "gap.json"), *extra]


def test_reasoning_gap_arms_and_references(job):
    root, data, runs = job
    bench = load_benchmark("reasoning_gap")
    res = bench.main(_args(root, data, runs, "--lengths", "2", "4", "--distill-users", "3"))
    js = json.loads((root / "res" / "gap.json").read_text())
    assert (root / "res" / "gap.png").stat().st_size > 0
    assert {"command", "date", "machine", "references", "arms"} <= set(js)
    assert set(js["references"]) == {"r2ec_no_reasoning", "popularity"}
    assert [(a["max_reasoning_tokens"], a["distill_users"]) for a in js["arms"]] == [(2, 3), (4, 3)]
    for a in js["arms"]:
        run = root / "work" / a["run"]
        cfg = json.loads((run / "config.json").read_text())
        # each arm is R2ec at its start: no RecPO step, its own length and map size, the job's warm start
        assert cfg["recpo"]["steps"] == 0 and cfg["recpo"]["max_reasoning_tokens"] == a["max_reasoning_tokens"]
        assert a["distill"]["users"] == 3
        assert a["test"]["N@10"] == json.loads((run / "metrics.json").read_text())["test"]["N@10"]
        assert 0.0 <= a["p_no_reasoning_better"] <= 1.0 and 0.0 <= a["p_above_popularity"] <= 1.0
    assert (root / "work" / "r2ec_no_reasoning").resolve() == (runs / "r2ec_no_reasoning").resolve()
    # a second call finds the arms finished and only re-reads them
    mtime = (root / "work" / "L2-d3" / "metrics.json").stat().st_mtime_ns
    again = bench.main(_args(root, data, runs, "--lengths", "2", "--distill-users", "3"))
    assert (root / "work" / "L2-d3" / "metrics.json").stat().st_mtime_ns == mtime
    assert again["arms"][0]["test"] == res["arms"][0]["test"]


def test_reasoning_gap_refuses_bad_arguments(job, tmp_path):
    root, data, runs = job
    bench = load_benchmark("reasoning_gap")
    with pytest.raises(SystemExit, match="positive"):
        bench.main(_args(root, data, runs, "--lengths", "0"))
    (tmp_path / "runs").mkdir()
    with pytest.raises(SystemExit, match="popularity"):
        bench.main(_args(root, data, tmp_path / "runs", "--lengths", "2"))
    # reference runs evaluated on other test samples than the arms: refused, naming both runs
    other = tmp_path / "other"
    shutil.copytree(runs, other, symlinks=True)
    f = other / "popularity" / "ranks.parquet"
    r = pl.read_parquet(f)
    last = r.filter(pl.col("split") == "test")["sample_id"].max()
    r.filter(~((pl.col("split") == "test") & (pl.col("sample_id") == last))).write_parquet(f)
    with pytest.raises(UserError, match="different test samples"):
        bench.main(_args(root, data, other, "--lengths", "2", "--distill-users", "3"))
