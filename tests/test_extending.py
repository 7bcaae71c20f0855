"""Adding a method is one module, one params section and one registry entry (docs/extending.md): a toy plugin
(tests/fixtures/toy_method.py) goes through the params checks, the Snakemake dry run, a real run, Table 1 and the
generated dvc.yaml without a change to the package."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from fixtures.data_fixtures import serve
from test_pipeline_smoke import CAT, _fixture, _tiny_params

ROOT = Path(__file__).resolve().parents[1]
PLUGIN = "fixtures.toy_method"


def _with_toy(p: dict) -> dict:
    p = dict(p, plugins=[PLUGIN], toy={"step": 1}, baselines=["popularity", "toy"], llm_baselines=[],
             r2ec_variants=[])
    p["report"] = dict(p["report"], table1_methods=["popularity", "random", "toy", "sasrec"])
    return p


def test_a_plugin_section_is_checked_like_a_built_in_one():
    from r2ec import config as C
    from r2ec import methods
    raw = _with_toy(yaml.safe_load((ROOT / "params.yaml").read_text()))
    p = C.from_dict(raw)
    assert p.toy.step == 1 and C.to_dict(p)["toy"] == {"step": 1}
    assert methods.get("toy").sections == ("seed", "eval", "toy") and "toy" in methods.names("classic")
    for bad, msg in (({"step": 0}, "toy.step: must be >= 1"), ({"stpe": 1}, "unknown key toy.stpe")):
        with pytest.raises(C.ConfigError, match=re.escape(msg)):
            C.from_dict(dict(raw, toy=bad))
    with pytest.raises(C.ConfigError, match="plugins: cannot import 'no_such_plugin'"):
        C.from_dict(dict(raw, plugins=["no_such_plugin"]))


def test_a_plugin_method_goes_through_the_pipeline_and_table1(tmp_path):
    remote, work = tmp_path / "remote", tmp_path / "work"
    _fixture(remote)
    work.mkdir()
    shutil.copy(ROOT / "Snakefile", work / "Snakefile")
    shutil.copytree(ROOT / "workflow", work / "workflow")
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}", OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")]))

    def snakemake(*args):
        r = subprocess.run([sys.executable, "-m", "snakemake", "--cores", "2", *args], cwd=work, env=env,
                           capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
        return r.stdout

    with serve(remote) as (base, _state):
        (work / "params.yaml").write_text(yaml.safe_dump(_with_toy(_tiny_params(base))))
        dry = snakemake("-n", "-p", "results/table1.tex")
        assert "method=toy" in dry and "--method toy" in dry and "-S 'toy={\"step\":1}'" in dry
        snakemake("results/table1.tex")
    table1 = (work / "results/table1.tex").read_text()
    assert "Successor" in table1 and "Popularity" in table1
    assert table1.index(r"\textit{Traditional}") < table1.index("Successor")  # its registry group
    assert (work / f"results/runs/{CAT}/toy/ranks.parquet").exists()

    from r2ec.pipeline import dvc_yaml
    stages = yaml.safe_load(dvc_yaml.render(work)[Path("dvc.yaml")])["stages"]
    assert stages[f"train_baseline-{CAT}-toy"]["params"] == ["seed", "eval", "toy"]
