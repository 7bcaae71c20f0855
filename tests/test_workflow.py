"""Snakemake and DVC run one DAG: the rules are its definition, dvc.yaml is generated from them."""

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


def test_dvc_yaml_is_generated_from_the_snakemake_rules():
    """The one DAG: dvc.yaml is what `python -m r2ec dvc-yaml` makes of the rules and params.yaml (so the two
    engines agree on stages, deps, params sections, outputs and threads)."""
    from r2ec.pipeline import dvc_yaml
    assert dvc_yaml.stale(ROOT) == [], "dvc.yaml is stale: run `python -m r2ec dvc-yaml`"


def test_a_dvc_stage_is_its_snakemake_job():
    from r2ec.pipeline.dag import DEFAULT_TARGET, jobs
    stages, _ = jobs([DEFAULT_TARGET], ROOT)
    by_name = {s.name: s for s in stages}
    dvc = _dvc()
    assert set(dvc) == set(by_name)
    sasrec = by_name["train_baseline-movielens-100k-sasrec"]
    st = dvc[sasrec.name]
    assert st["params"] == ["seed", "eval", "sasrec"] == list(sasrec.params)  # only its own method's section
    assert st["deps"] == ["results/data/movielens-100k"] == list(sasrec.deps)
    assert st["outs"] == [{"results/runs/movielens-100k/sasrec": {"persist": True}}]  # the run directory
    assert sasrec.threads == 1 and sasrec.outs == ("results/runs/movielens-100k/sasrec/metrics.json",
                                                   "results/runs/movielens-100k/sasrec/ranks.parquet")
    assert st["cmd"].startswith("R2EC_DVC_SYNC=0 python -m snakemake results/runs/movielens-100k/sasrec/metrics.json ")
    assert st["cmd"].endswith("--cores all --force --allowed-rules train_baseline")
    assert dvc["table1"]["metrics"] == [{"results/metrics.json": {"cache": False}}]  # `dvc exp show` reads it
    # the same default work as `make table1` (rule all): no Table 2 variant, sweep or latency stage
    assert not any(n.startswith(("table2", "table4", "sweep", "train_r2ec_sweep")) for n in dvc)
    assert "train_r2ec-movielens-100k-r2ec_no_rd" not in dvc
    for name, st in dvc.items():  # every recpo reader is an R2ec run (or Table 1, which marks deviations)
        if "recpo" in st.get("params", []):
            assert name.startswith("train_r2ec-") or name == "table1", name


def test_paper_pipeline_file_holds_only_the_long_targets():
    from r2ec.pipeline import dvc_yaml
    files = dvc_yaml.render(ROOT, paper=True)
    paper = yaml.safe_load(files[dvc_yaml.PAPER_FILE])["stages"]
    assert {"table2", "table4", "sweep_figure-beta", "train_r2ec-movielens-100k-r2ec_no_rd"} <= set(paper)
    assert not set(paper) & set(_dvc()) and all(st["wdir"] == "../.." for st in paper.values())


def test_split_sections_keeps_a_further_seeds_overrides():
    from r2ec.pipeline.dag import split_sections, stage_name
    assert split_sections("-S seed=7 -S 'eval={\"ks\": [5]}' -S sasrec.seed=7") == (("seed", "eval"),
                                                                                "-S sasrec.seed=7")
    assert stage_name("train_r2ec_sweep", {"dataset": "Video_Games", "key": "beta", "value": "0.05"}) == \
        "train_r2ec_sweep-Video_Games-beta-0_05"
    assert stage_name("train_baseline", {"tree": "seeds/7/", "dataset": "d", "method": "m"}) == \
        "train_baseline-seeds_7-d-m"


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
    r2ec = _job(out, "train_r2ec", "bb=, tree=seeds/7/, dataset=movielens-100k, method=r2ec")
    assert f"{tree}/r2ec_no_reasoning/metrics.json" in r2ec and "-S seed=7 -S recpo.seed=7 -S readout.seed=7 2> " in r2ec
    d3 = _job(out, "train_d3", "bb=, tree=seeds/7/, dataset=movielens-100k")
    assert f"{tree}/bigrec/metrics.json" in d3 and " -S seed=7 2> results/logs/train/seeds/7/" in d3  # no d3.seed
    assert "eval.seed" not in out  # every seed's runs are evaluated on the same test samples
    table1 = _job(out, "table1")
    assert f"{tree}/r2ec/metrics.json" in table1 and "-S 'seeds=[2025,7]'" in table1


def test_table1_rule_hands_over_every_section_of_the_deviations_registry(tmp_path):
    """Table 1 marks rows run under a deviation from the paper, so its job gets every section the registry names."""
    from r2ec.config.deviations import sections
    (tmp_path / "w").mkdir()
    out, _ = _dry_run(tmp_path / "w")
    table1 = _job(out, "table1")
    for name in sections():
        assert f"-S '{name}=" in table1, name


def test_snakemake_configfile_selects_the_paper_profile(tmp_path):
    """`snakemake --configfile configs/profiles/paper.yaml` lays the profile over params.yaml: every job gets the
    paper's values in its -S sections."""
    import json as _json

    from r2ec.config import deviations as V
    (tmp_path / "w").mkdir()
    out, jobs = _dry_run(tmp_path / "w", "--configfile", str(ROOT / "configs/profiles/paper.yaml"))
    # the paper's three Amazon categories x its two backbones
    assert jobs["prepare"] == 3 and jobs["train_r2ec"] == 18 and jobs["backbone"] == 2
    r2ec = _job(out, "train_r2ec", "bb=, tree=, dataset=Video_Games, method=r2ec")
    sections = {m[0]: _json.loads(m[1]) for m in re.findall(r"-S '(\w+)=(\{.*?\})'", r2ec)}
    for d in V.DEVIATIONS:
        if d.has_paper_value and d.section in sections:
            assert sections[d.section][d.key.split(".")[1]] == V._plain(d.paper), d.key
    assert sections["recpo"]["max_minutes"] == sections["contrastive"]["max_minutes"] == 0
    table1 = _job(out, "table1")
    assert '"backbone":"google/gemma-2-2b-it"' in table1 and '"max_samples":0' in table1
    # Qwen2.5's runs: its own tree and cache, the same sections with llm.backbone overridden last
    qwen = _job(out, "train_r2ec", "bb=backbones/Qwen2.5-3B-Instruct/, tree=, dataset=Video_Games, method=r2ec")
    tree = "results/backbones/Qwen2.5-3B-Instruct/"
    assert f"--out {tree}runs/Video_Games/r2ec --cache {tree}cache " in qwen
    assert f"{tree}cache/item_tables/Video_Games.json" in qwen  # its own item table
    assert " -S llm.backbone=Qwen/Qwen2.5-3B-Instruct 2> " in qwen
    assert f"{tree}runs/Video_Games/r2ec/metrics.json" in table1 and f"{tree}runs/Video_Games/sasrec" not in table1
    # D3's SFT adapter is its backbone's BigRec run; its assistant SASRec is the one backbone-free run
    d3 = _job(out, "train_d3", "bb=backbones/Qwen2.5-3B-Instruct/, tree=, dataset=Video_Games")
    assert f"{tree}runs/Video_Games/bigrec/metrics.json" in d3


def test_llm_jobs_start_under_the_launch_section(tmp_path):
    """`launch.processes` > 1 starts every LLM training job (R2ec variants, BigRec, D3, LangPTune) under the
    launcher with processes x threads cores and the GPU resource; the other jobs keep a plain python process."""
    (tmp_path / "one").mkdir()
    out, _ = _dry_run(tmp_path / "one")
    r2ec = _job(out, "train_r2ec", "bb=, tree=, dataset=movielens-100k, method=r2ec")
    assert "gpu=0" in r2ec and "Shell command: python -m r2ec train --quiet --threads 1 --method r2ec " in r2ec
    (tmp_path / "two").mkdir()
    out, _ = _dry_run(tmp_path / "two", "--cores", "4", "--configfile", str(ROOT / "configs/profiles/zero2-cpu2.yaml"))
    for rule, wc in (("train_r2ec", "bb=, tree=, dataset=movielens-100k, method=r2ec"),
                     ("train_bigrec", "bb=, tree=, dataset=movielens-100k"), ("train_d3", "bb=, tree=, dataset=movielens-100k"),
                     ("train_langptune", "bb=, tree=, dataset=movielens-100k")):
        job = _job(out, rule, wc)
        assert "    threads: 2\n" in job and "gpu=0" in job, rule
        assert ("Shell command: OMP_NUM_THREADS=1 ACCELERATE_USE_DEEPSPEED=true ACCELERATE_DEEPSPEED_CONFIG_FILE="
                "configs/accelerate/ds_config_zero2.json DS_ACCELERATOR=cpu torchrun --standalone --nproc_per_node 2 "
                "-m r2ec train --quiet --threads 1 ") in job, rule
    sasrec = _job(out, "train_baseline", "tree=, dataset=movielens-100k, method=sasrec")
    assert "torchrun" not in sasrec and "Shell command: python -m r2ec train" in sasrec


def test_launcher_commands():
    from r2ec.config import LaunchCfg
    from r2ec.pipeline.launch import job_threads, launcher
    assert launcher(LaunchCfg()) == "python" and job_threads(LaunchCfg()) == 1
    gpu = LaunchCfg(processes=4, launcher="accelerate", threads=2)
    assert launcher(gpu) == ("accelerate launch --config_file configs/accelerate/zero2.yaml --num_machines 1 "
                             "--num_processes 4")
    assert job_threads(gpu) == 8
    assert launcher(LaunchCfg(processes=2)) == "OMP_NUM_THREADS=1 torchrun --standalone --nproc_per_node 2"
