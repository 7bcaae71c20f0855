"""``python -m r2ec dvc-sync``: record in ``dvc.lock`` (and DVC's cache) what Snakemake built.

DVC knows only what ``dvc.lock`` records; without this, ``dvc exp run`` after a Snakemake run would see every
stage as new and re-run (and first delete) all of them. Snakemake calls this when a run ends
(``onsuccess`` / ``onerror`` in the Snakefile), so the three front ends share one set of results.

A stage is committed only when Snakemake considers its job done: every declared output exists and Snakemake
would not re-run it (missing, older than an input, or built with other params or code). A stage Snakemake
never built, or that is out of date, keeps its old lock entry (or none), so DVC re-runs it.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from r2ec.pipeline.dag import PAPER_TARGET, jobs

log = logging.getLogger("r2ec")


def committable(root: Path, snakefile: Path | None = None) -> list[str]:
    """Names of the DVC stages whose Snakemake job is done, in a topological order. One DAG serves both DVC
    files: ``rule paper`` includes ``rule all``, so its jobs are every stage of either."""
    root = Path(root)
    stages, stale = jobs([PAPER_TARGET], root, snakefile)
    return [s.name for s in stages if s.name not in stale and all((root / f).exists() for f in s.outs)]


def sync(root: Path = Path("."), snakefile: Path | None = None) -> list[str]:
    """``dvc commit`` every stage of ``dvc.yaml`` (and the paper file) whose Snakemake job is done; return
    their names. A directory that is not a DVC project is left alone (nothing to record)."""
    root = Path(root).resolve()
    if not (root / ".dvc").is_dir():
        log.info("dvc-sync: %s is not a DVC project; nothing to record", root)
        return []
    from dvc.repo import Repo

    done = committable(root, snakefile)
    cwd = os.getcwd()
    os.chdir(root)  # DVC resolves stage addresses against the working directory
    try:
        with Repo(str(root)) as repo:
            known = {s.name: s for s in repo.index.stages if s.name}
            names = [n for n in done if n in known]
            for n in names:
                repo.commit(known[n].addressing, force=True)
    finally:
        os.chdir(cwd)
    return names
