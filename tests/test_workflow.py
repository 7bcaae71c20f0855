"""Snakemake and DVC wire the same commands and outputs from the same params."""

import re
import shutil
import subprocess
import sys
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


def _dry_run(workdir: Path, *args: str) -> tuple[str, dict[str, int]]:
    shutil.copy(ROOT / "params.yaml", workdir / "params.yaml")
    r = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "-d", str(workdir),
                        "--cores", "1", "-n", "-p", "results/table1.tex", *args],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    jobs = {k: int(v) for k, v in re.findall(r"^(\w+)\s+(\d+)$", r.stdout, flags=re.M)}
    return r.stdout, jobs


def _job(out: str, rule: str, wildcards: str = "") -> str:
    """The dry run's block of the job of ``rule`` with ``wildcards`` (as Snakemake prints them)."""
    blocks = [b for b in re.split(r"\n(?=\[)", out)
              if f"rule {rule}:" in b and (f"wildcards: {wildcards}\n" in b if wildcards else "wildcards:" not in b)]
    assert len(blocks) == 1, (rule, wildcards)
    return blocks[0]


def test_further_seeds_get_their_own_run_tree(tmp_path):
    p = yaml.safe_load((ROOT / "params.yaml").read_text())
    n_r2ec = len(p["r2ec_variants"]) + 1  # + r2ec_no_reasoning
    (tmp_path / "one").mkdir()
    out, jobs = _dry_run(tmp_path / "one")
    assert p["seeds"] == [2025] and "results/seeds/" not in out and "-S seed=7" not in out
    assert jobs["train_baseline"] == len(p["baselines"]) and jobs["train_r2ec"] == n_r2ec and jobs["table1"] == 1

    (tmp_path / "two").mkdir()
    out, jobs = _dry_run(tmp_path / "two", "--config", "seeds=[2025,7]")
    assert jobs["train_baseline"] == 2 * len(p["baselines"]) and jobs["train_r2ec"] == 2 * n_r2ec
    assert jobs["train_bigrec"] == jobs["train_d3"] == 2 and jobs["table1"] == 1
    tree = "results/seeds/7/runs/movielens-100k"
    # the same command, with the further seed for the global seed and the method's own section
    sasrec = _job(out, "train_baseline", "tree=seeds/7/, dataset=movielens-100k, method=sasrec")
    assert f"--out {tree}/sasrec -S seed=2025 " in sasrec and "-S seed=7 -S sasrec.seed=7 2> " in sasrec
    assert "results/logs/train/seeds/7/movielens-100k/sasrec.log" in sasrec
    # the warm start and D3's SFT adapter come from the same seed's runs
    r2ec = _job(out, "train_r2ec", "tree=seeds/7/, dataset=movielens-100k, method=r2ec")
    assert f"{tree}/r2ec_no_reasoning/metrics.json" in r2ec and "-S seed=7 -S recpo.seed=7 -S readout.seed=7 2> " in r2ec
    d3 = _job(out, "train_d3", "tree=seeds/7/, dataset=movielens-100k")
    assert f"{tree}/bigrec/metrics.json" in d3 and " -S seed=7 2> results/logs/train/seeds/7/" in d3  # no d3.seed
    assert "eval.seed" not in out  # every seed's runs are evaluated on the same test samples
    table1 = _job(out, "table1")
    assert f"{tree}/r2ec/metrics.json" in table1 and "-S 'seeds=[2025,7]'" in table1
