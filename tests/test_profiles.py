"""The deviations registry, the paper profile generated from it, and selecting a profile (CLI, DVC route)."""

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from r2ec import config as C
from r2ec.config import deviations as V
from r2ec.config import profiles as P

ROOT = Path(__file__).resolve().parents[1]
PAPER = ROOT / "configs/profiles/paper.yaml"


def _cli(*args, cwd=ROOT):
    return subprocess.run([sys.executable, "-m", "r2ec", *args], capture_output=True, text=True, cwd=cwd, timeout=120)


def _minute_keys(cls=C.Params, prefix=""):
    for f in dataclasses.fields(cls):
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else None
        if default is not None and dataclasses.is_dataclass(default):
            yield from _minute_keys(type(default), f"{prefix}{f.name}.")
        elif f.name.endswith("max_minutes"):
            yield prefix + f.name


def test_registry_validates_and_matches_params_yaml():
    V.check_registry()
    p = C.load(ROOT / "params.yaml")
    for d in V.DEVIATIONS:
        assert V.value_of(p, d.key) == V._plain(d.cpu), f"{d.key}: the registry's CPU value is not params.yaml's"
    assert {d.key for d in V.in_effect(p)} == {d.key for d in V.DEVIATIONS if d.has_paper_value}


def test_every_minute_budget_is_registered_with_paper_value_zero():
    keys = set(_minute_keys())
    assert keys >= {"recpo.max_minutes", "contrastive.max_minutes", "bigrec.max_minutes", "langptune.max_minutes"}
    for k in keys:
        assert V.get(k).paper == 0


def test_registry_rejects_bad_entries(monkeypatch):
    def with_entry(entry):
        monkeypatch.setattr(V, "DEVIATIONS", V.DEVIATIONS + (entry,))
        with pytest.raises(C.ConfigError) as e:
            V.check_registry()
        monkeypatch.setattr(V, "DEVIATIONS", V.DEVIATIONS[:-1])
        return str(e.value)

    assert "no such params key" in with_entry(V.Deviation("recpo.nope", 1, 2, "x"))
    assert "recpo.lr" in with_entry(V.Deviation("recpo.lr", 2e-5, -1.0, "x"))  # the paper value out of range
    assert "registered twice" in with_entry(V.Deviation("recpo.lr", 2e-5, 1e-5, "x"))
    # an entry without a paper value must say so
    assert "no paper value" in with_entry(V.Deviation("recpo.tau", 0.02, None, "unknown"))
    monkeypatch.setattr(V, "DEVIATIONS", V.DEVIATIONS + (V.Deviation("recpo.tau", 0.02, None, "no paper value: x"),))
    V.check_registry()


def test_generated_files_are_not_stale():
    """configs/profiles/paper.yaml and docs/deviations.md are what the registry renders."""
    assert P.stale(ROOT) == [], f"stale; run `{P.WRITE}`"
    r = _cli("profile", "paper", "--check")
    assert r.returncode == 0, r.stderr


def test_stale_check_fails_on_an_edited_copy(tmp_path):
    for rel in (P.PAPER_FILE, P.DOCS_FILE):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text((ROOT / rel).read_text())
    assert P.stale(tmp_path) == []
    (tmp_path / P.PAPER_FILE).write_text((ROOT / P.PAPER_FILE).read_text().replace("lr: 1.0e-05", "lr: 2.0e-05"))
    r = _cli("profile", "paper", "--check", "--root", str(tmp_path))
    assert r.returncode == 2 and "paper.yaml" in r.stderr and "profile paper --write" in r.stderr


def test_cli_resolves_the_paper_profile():
    r = _cli("check-params", "--params", "params.yaml", "--params", "configs/profiles/paper.yaml", "--show")
    assert r.returncode == 0, r.stderr
    resolved = json.loads(r.stdout)
    p = C.from_dict(resolved)
    for d in V.DEVIATIONS:
        if d.has_paper_value:
            assert V.value_of(p, d.key) == V._plain(d.paper), d.key
        else:
            assert V.value_of(p, d.key) == V._plain(d.cpu), d.key  # left at the CPU default
    for k in _minute_keys():
        assert V.value_of(p, k) == 0, k
    assert V.in_effect(p) == []
    # later files win; the default stays params.yaml alone
    assert C.load([ROOT / "params.yaml", PAPER]).recpo.lr == 1e-5 and C.load(ROOT / "params.yaml").recpo.lr == 1e-4
    assert "params.yaml: ok" in _cli("check-params").stdout


def test_profile_yaml_reads_back_with_the_registry_types():
    raw = yaml.safe_load(PAPER.read_text())
    assert raw == V.paper_overlay()
    assert isinstance(raw["recpo"]["lr"], float) and raw["recpo"]["warm_start"] == ""


def test_bad_profile_input_names_the_file_and_key(tmp_path):
    r = _cli("profile", "nosuch")
    assert r.returncode == 2 and "nosuch" in r.stderr and "known: gpus4, paper, paper-smoke, zero2-cpu2" in r.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text("recpo:\n  lrr: 1\n")
    r = _cli("check-params", "--params", "params.yaml", "--params", str(bad))
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1
    assert f"{bad}: unknown key recpo.lrr" in r.stderr
    bad.write_text("recpo:\n  lr: -1\n")
    r = _cli("check-params", "--params", "params.yaml", "--params", str(bad))
    assert r.returncode == 2 and f"{bad}: recpo.lr: must be > 0" in r.stderr
    r = _cli("check-params", "--params", "params.yaml", "--params", str(tmp_path / "missing.yaml"))
    assert r.returncode == 2 and "missing.yaml: params file not found" in r.stderr


def test_apply_writes_params_yaml_with_the_paper_values_and_every_comment(tmp_path):
    """The DVC route: params.yaml rewritten in place equals params.yaml + the profile, comments kept."""
    (tmp_path / "params.yaml").write_text((ROOT / "params.yaml").read_text())
    r = _cli("profile", "paper", "--apply", "--root", str(tmp_path))
    assert r.returncode == 0, r.stderr
    before, after = (ROOT / "params.yaml").read_text(), (tmp_path / "params.yaml").read_text()
    assert C.load(tmp_path / "params.yaml") == C.load([ROOT / "params.yaml", PAPER])
    assert len(before.splitlines()) == len(after.splitlines())
    comments = [line.split("#", 1)[1] for line in before.splitlines() if "#" in line]
    assert comments == [line.split("#", 1)[1] for line in after.splitlines() if "#" in line]
    assert "  lr: 1.0e-05                    # AdamW learning rate\n" in after  # the comment column kept
    with pytest.raises(C.ConfigError, match="key recpo.nope is not in the params file"):
        P.apply_text(before, {"recpo": {"nope": 1}}, "x.yaml")


@pytest.mark.parametrize("name", ["zero2-cpu2", "gpus4"])
def test_hardware_profiles_load_over_params_yaml(name):
    """The hand-written launch profiles are valid overlays that touch only the launch section and, since DeepSpeed
    steps on every backward, recpo.micro_batch_size."""
    path = ROOT / "configs" / "profiles" / f"{name}.yaml"
    raw = yaml.safe_load(path.read_text())
    assert set(raw) == {"launch", "recpo"} and raw["recpo"] == {"micro_batch_size": 0}
    p = C.load([ROOT / "params.yaml", path])
    base = C.load(ROOT / "params.yaml")
    assert p.launch.processes > 1 and C.to_dict(p.recpo) == C.to_dict(base.recpo) | {"micro_batch_size": 0}


def test_paper_smoke_profile_keeps_the_papers_switches():
    """configs/profiles/paper-smoke.yaml over the paper and zero2-cpu2 profiles: two tiny backbone groups, 2
    DeepSpeed processes, every minute budget 0 and the paper's method switches; it shrinks sizes only."""
    from r2ec.pipeline.smoke import PROFILES
    p = C.load([ROOT / "params.yaml", *(ROOT / f for f in PROFILES)])
    assert p.backbones == ("tiny-random-gemma2", "tiny-random-qwen2") and p.llm.backbone == p.backbones[0]
    assert p.launch.processes == 2 and p.launch.deepspeed_config and p.recpo.engine == "hf"
    assert p.recpo.max_minutes == p.contrastive.max_minutes == p.bigrec.max_minutes == p.langptune.max_minutes == 0
    assert (p.readout.rank, p.recpo.popularity_prior, p.recpo.uniform_negatives, p.recpo.warm_start) == (0, 0, 0, "")
    assert (p.lora.last_layers, p.llm.dtype, p.llm.max_prompt_tokens) == (0, "bfloat16", 1024)
    assert (p.recpo.group_size, p.recpo.temperature, p.recpo.top_k, p.recpo.k_r, p.recpo.beta) == (4, 1.5, 200, 1000,
                                                                                                     0.05)
    assert (p.recpo.clip_low, p.recpo.clip_high, p.recpo.kl_coef) == (0.2, 0.28, 0.0)
