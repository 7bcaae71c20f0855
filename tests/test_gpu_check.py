"""benchmarks/gpu_check.py as a dry run on the CPU (--cpu) on the tiny random Llama: the JSON a GPU run writes."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from r2ec.config import to_dict
from recpo_fixtures import load_benchmark, tiny_params, with_recpo, write_tiny_dataset

def _script():
    return load_benchmark("gpu_check")


def test_gpu_check_dry_run_writes_the_evidence(tmp_path):
    ds, data = write_tiny_dataset(tmp_path)
    p = with_recpo(tiny_params(), batch_size=2, group_size=2, max_reasoning_tokens=4)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(to_dict(p)))
    out = tmp_path / "gpu.json"
    _script().main(["--cpu", "--params", str(tmp_path / "params.yaml"), "--data", str(data), "--cache", "",
                    "--steps", "3", "--out", str(out)])
    js = json.loads(out.read_text())
    assert js["processes"] == 1 and js["engine"] == "single" and js["machine"]["kind"] == "cpu" and js["params"]["recpo"]["group_size"] == 2
    assert [s["step"] for s in js["steps"]] == [0, 1, 2]
    for s in js["steps"]:
        assert s["seconds"] > 0 and s["tokens_per_s"] > 0 and 0.0 <= s["reward"] <= 1.0
        assert math.isfinite(s["token_loss"]) and math.isfinite(s["item_loss"])
    summ = js["summary"]
    assert summ["steps_per_s"] == pytest.approx(2 / sum(s["seconds"] for s in js["steps"][1:]))
    assert summ["reward_trend"]["slope"] is not None and 0.0 <= summ["reward_trend"]["p"] <= 1.0
    assert js["item_table"]["items"] == ds.n_items and js["item_table"]["seconds"] > 0
    assert js["peak_memory_gib"] > 0


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal is for machines without CUDA")
def test_gpu_check_refuses_without_a_gpu():
    with pytest.raises(SystemExit, match="no CUDA device here"):
        _script().main(["--steps", "1"])


def test_gpu_check_names_a_missing_dataset_in_one_line(tmp_path):
    root = Path(__file__).resolve().parents[1]
    r = subprocess.run([sys.executable, str(root / "benchmarks" / "gpu_check.py"), "--cpu", "--data",
                        str(tmp_path / "missing"), "--steps", "1"], capture_output=True, text=True, cwd=root,
                       env={**os.environ, "PYTHONPATH": str(root / "src")})
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert f"error: {tmp_path / 'missing'}: prepared dataset directory not found" in r.stderr
