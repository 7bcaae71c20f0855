"""``make paper-smoke``: the paper's profile end to end at tiny scale on this machine.

A fresh work directory (``build/paper-smoke``) gets ``params.yaml`` and a link to ``configs/``; Snakemake builds
Table 1 there with ``configs/profiles/paper.yaml``, ``zero2-cpu2.yaml`` and ``paper-smoke.yaml`` laid over
``params.yaml``: two tiny random backbones standing in for Gemma-2 and Qwen2.5 (two backbone groups),
MovieLens-100K, 2 CPU processes per LLM job under DeepSpeed ZeRO-2, the transformers rollout engine in place of
vLLM. Then it checks what the run must show: every LLM training log of both backbones reports ``world size 2,
engine deepspeed``, and ``table1.tex`` has one LLM-based group per backbone."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

from r2ec.errors import UserError

PROFILES = ("configs/profiles/paper.yaml", "configs/profiles/zero2-cpu2.yaml", "configs/profiles/paper-smoke.yaml")
WORLD = "world size 2, engine deepspeed"  # r2ec.train.harness logs it when a run starts


def prepare(root: Path, work: Path, raw: Path | None = None) -> None:
    """A fresh ``work``: params.yaml, configs/ (linked; the launch configs are relative paths) and, when given, a
    link to an existing raw-download folder (the MovieLens-100K wheel is then not fetched again)."""
    if work.exists():
        shutil.rmtree(work)
    (work / "results").mkdir(parents=True)
    shutil.copy(root / "params.yaml", work / "params.yaml")
    (work / "configs").symlink_to((root / "configs").resolve(), target_is_directory=True)
    if raw is not None and raw.is_dir():
        (work / "results" / "raw").symlink_to(raw.resolve(), target_is_directory=True)


def command(root: Path, work: Path, cores: int) -> list[str]:
    """Snakemake on Table 1 in ``work`` with the three profiles (later files win)."""
    return [sys.executable, "-m", "snakemake", "results/table1.tex", "-s", str(root / "Snakefile"), "-d", str(work),
            "--cores", str(cores), "--configfile", *(str(root / p) for p in PROFILES)]


def check(work: Path) -> dict:
    """The run's evidence: every LLM training log of every backbone says :data:`WORLD`, and Table 1 has one
    LLM-based group per backbone. Raises UserError naming what is missing."""
    from r2ec.config import load
    from r2ec.config.backbones import backbone_groups
    p = load([work / "params.yaml", *(work / f for f in PROFILES)])
    llm = {*p.llm_baselines, *p.r2ec_variants, "r2ec_no_reasoning"}
    root = work / "results" / "logs" / "train"
    logs = [f.relative_to(root) for f in root.rglob("*.log") if f.stem in llm]
    bad = sorted(str(f) for f in logs if WORLD not in (root / f).read_text())
    tags = [b.tag for b in backbone_groups(p)]
    # llm.backbone's logs are train/<dataset>/..., another backbone's train/backbones/<tag>/<dataset>/...
    per = {b.tag: sum(f.parts[:2] == ("backbones", b.tag) if b.prefix else f.parts[0] != "backbones" for f in logs)
           for b in backbone_groups(p)}
    if bad or not all(per.values()):
        raise UserError(f"paper-smoke: LLM training logs without '{WORLD}': {bad}; logs per backbone: {per}")
    table = (work / "results" / "table1.tex").read_text()
    groups = re.findall(r"\\textit\{(LLM-based \([^)]*\))\}", table)
    if len(groups) != len(tags):
        raise UserError(f"paper-smoke: results/table1.tex has the LLM-based groups {groups}; expected one per "
                        f"backbone of {tags}")
    return {"llm_logs": per, "groups": groups}


def run(root: Path, work: Path, cores: int, raw: Path | None = None) -> dict:
    prepare(root, work, raw)
    t0 = time.time()
    env = os.environ | {"R2EC_DVC_SYNC": "0"}  # not a DVC project
    done = subprocess.run(command(root, work, cores), env=env)
    if done.returncode:
        raise UserError(f"paper-smoke: Snakemake failed (exit {done.returncode}); logs under {work}/results/logs")
    return check(work) | {"minutes": round((time.time() - t0) / 60, 1), "table": str(work / "results/table1.tex")}
