"""Snakemake and DVC wire the same commands and outputs from the same params."""

import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def _smk_text():
    return "\n".join(p.read_text() for p in sorted((ROOT / "workflow/rules").glob("*.smk")))


def _dvc():
    return yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


def _stage_cmds():
    return {name: (st.get("do") or st)["cmd"] for name, st in _dvc().items()}


def test_same_cli_stages():
    smk_stages = set(re.findall(r"python -m r2ec (\w[\w-]*)", _smk_text()))
    dvc_stages = {re.match(r"python -m r2ec (\w[\w-]*)", c).group(1) for c in _stage_cmds().values()}
    assert smk_stages == dvc_stages


def test_same_outputs():
    smk = _smk_text()
    for path in ["results/raw/", "results/data/", "results/runs/", "results/table1.tex", "results/table3.tex"]:
        assert path in smk
        assert path in (ROOT / "dvc.yaml").read_text()


def test_dvc_train_stage_lists_only_its_method_params():
    st = _dvc()["train_baseline"]
    assert st["params"] == ["seed", "eval", "${item.method}"]
    assert "data" not in st["params"]
    smk = (ROOT / "workflow/rules/baselines.smk").read_text()
    assert 'sections("seed", "eval", wc.method)' in smk


def test_params_yaml_not_a_rule_input():
    assert "params.yaml" not in _smk_text()
