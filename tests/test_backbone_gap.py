"""benchmarks/backbone_gap.py over two tiny backbones' finished runs: sizes, gaps, tests, RecPO's step record."""

import dataclasses
import json

import pytest

from r2ec.baselines.reference import train_method
from r2ec.config import LlmCfg
from r2ec.recpo.trainer import train_r2ec
from recpo_fixtures import load_benchmark, tiny_params, with_recpo, write_tiny_dataset


@pytest.fixture(scope="module")
def trees(tmp_path_factory):
    root = tmp_path_factory.mktemp("backbones")
    ds, _ = write_tiny_dataset(root)
    out = {}
    for tag, spec in (("llama", "tiny-random"), ("qwen2", "tiny-random-qwen2")):
        p = with_recpo(tiny_params(steps=2, eval_every=1), warm_start="r2ec_no_reasoning")
        p = dataclasses.replace(p, llm=LlmCfg(backbone=spec, max_prompt_tokens=128))
        runs = root / tag / "runs"
        for m in ("r2ec_no_reasoning", "r2ec"):
            train_r2ec(m, ds, p, runs / m, None, progress=False, dvclive=False)
        out[tag] = runs
    train_method("popularity", ds, p, out["llama"] / "popularity", None, progress=False)
    return root, out


def test_backbone_gap_reads_each_trees_rows_gap_and_steps(trees):
    root, t = trees
    bench = load_benchmark("backbone_gap")
    res = bench.main(["--tree", f"llama={t['llama']}", "--tree", f"qwen2={t['qwen2']}",
                      "--out", str(root / "res" / "gap.json")])
    js = json.loads((root / "res" / "gap.json").read_text())
    assert (root / "res" / "gap.png").stat().st_size > 0
    assert [r["tag"] for r in js["backbones"]] == ["llama", "qwen2"]
    for r, spec in zip(js["backbones"], ("tiny-random", "tiny-random-qwen2")):
        runs = t[r["tag"]]
        assert r["backbone"] == spec and r["params"] > 0
        n10 = {m: json.loads((runs / m / "metrics.json").read_text())["test"]["N@10"]
               for m in ("r2ec", "r2ec_no_reasoning")}
        assert r["gap_N@10"] == pytest.approx(n10["r2ec"] - n10["r2ec_no_reasoning"])
        for k in ("p_no_reasoning_better", "p_r2ec_better", "p_r2ec_above_popularity",
                  "p_r2ec_no_reasoning_above_popularity"):
            assert 0.0 <= r[k] <= 1.0
        # the step record is the run's own: the step its config names, the valid N@10 logged at it
        cfg = json.loads((runs / "r2ec" / "config.json").read_text())
        valid = [json.loads(x) for x in (runs / "r2ec" / "valid_log.jsonl").read_text().splitlines()]
        assert r["recpo"]["selected_step"] == cfg["run"]["best_step"]
        assert r["recpo"]["last_step"] == 2
        assert r["recpo"]["valid_N@10_selected"] == next(v["N@10"] for v in valid
                                                         if v["step"] == cfg["run"]["best_step"])
        assert r["recpo"]["valid_N@10_last"] == valid[-1]["N@10"] and valid[-1]["step"] == 2
        kl = [json.loads(x)["kl_ref"] for x in (runs / "r2ec" / "train_log.jsonl").read_text().splitlines()]
        assert r["recpo"]["kl_ref_max"] == max(kl) and r["recpo"]["kl_ref_mean"] == pytest.approx(sum(kl) / len(kl))
    assert js["backbones"][0]["params"] != js["backbones"][1]["params"]
    assert [(x["method"], x["a"], x["b"]) for x in js["across_backbones"]] == [
        ("r2ec_no_reasoning", "qwen2", "llama"), ("r2ec", "qwen2", "llama")]
    assert res["popularity"]["N@10"] == json.loads(
        (t["llama"] / "popularity" / "metrics.json").read_text())["test"]["N@10"]


def test_backbone_gap_refuses_a_tree_without_its_runs(trees, tmp_path):
    root, t = trees
    bench = load_benchmark("backbone_gap")
    with pytest.raises(SystemExit, match="no finished r2ec_no_reasoning, r2ec run"):
        bench.main(["--tree", f"llama={t['llama']}", "--tree", f"empty={tmp_path}", "--out", str(tmp_path / "x.json")])
    with pytest.raises(SystemExit, match="expected TAG=DIR"):
        bench.main(["--tree", "nodir", "--out", str(tmp_path / "x.json")])
