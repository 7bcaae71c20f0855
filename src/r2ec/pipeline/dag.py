"""The pipeline's one DAG, read from the Snakemake rules: every job of a target as a ``Stage``.

The Snakefile and ``workflow/rules/*.smk`` are the single definition of the stages. This module asks
Snakemake (its API, no execution) which jobs a target needs for the current ``params.yaml`` and turns each into
what DVC needs: a name, the command, the files it reads, the params sections it reads, the files it writes,
its threads. ``dvc.yaml`` is generated from these (``r2ec.pipeline.dvc_yaml``) and ``python -m r2ec dvc-sync``
uses the same jobs to record in ``dvc.lock`` what Snakemake built (``r2ec.pipeline.sync``).

The rules hand each job its params sections as ``-S 'name=<json>'`` arguments (``sections()`` in
``common.smk``); the DVC stage lists the same names as its ``params``, so both engines re-run a job for the
same changes.
"""

from __future__ import annotations

import contextlib
import io
import logging
import shlex
from dataclasses import dataclass
from pathlib import Path

# `rule all` (make table1, dvc repro) and `rule paper` (make paper, dvc repro workflow/paper/dvc.yaml)
DEFAULT_TARGET = "all"
PAPER_TARGET = "paper"


class PipelineError(RuntimeError):
    """The Snakemake rules could not be read into a DAG (the message says why)."""


@dataclass(frozen=True)
class Stage:
    name: str  # the rule, then its wildcard values: train_baseline-movielens-100k-sasrec
    rule: str
    deps: tuple[str, ...]  # the job's input files and directories
    params: tuple[str, ...]  # top-level params.yaml keys the job reads (its -S sections)
    outs: tuple[str, ...]  # the job's declared outputs
    threads: int
    logs: tuple[str, ...]


def stage_name(rule: str, wildcards: dict[str, str]) -> str:
    """``rule`` plus the non-empty wildcard values, '-'-joined (DVC names allow letters, digits, '_' and '-';
    '.' and '@' of sweep points become '_')."""
    parts = [rule] + [str(v).strip("/").replace("/", "_") for v in wildcards.values() if str(v)]
    name = "-".join(parts)
    return "".join(c if c.isalnum() or c in "_-" else "_" for c in name)


def split_sections(arg: str) -> tuple[tuple[str, ...], str]:
    """Split a rule's ``S`` param into (section names, the other arguments: dotted overrides of a further seed).

    >>> split_sections("-S seed=2025 -S 'eval={\\"ks\\":[5]}' -S recpo.seed=7")
    (('seed', 'eval'), '-S recpo.seed=7')
    """
    tokens = shlex.split(arg)
    names, keep = [], []
    i = 0
    while i < len(tokens):
        if tokens[i] in ("-S", "--set") and i + 1 < len(tokens):
            key = tokens[i + 1].split("=", 1)[0]
            if "." in key:
                keep += [tokens[i], tokens[i + 1]]
            else:
                names.append(key)
            i += 2
        else:
            keep.append(tokens[i])
            i += 1
    return tuple(names), shlex.join(keep)


def _stage(job) -> Stage:
    names, _ = split_sections(str(job.params.get("S", "")) if "S" in job.params.keys() else "")
    return Stage(name=stage_name(job.rule.name, dict(job.wildcards.items())), rule=job.rule.name,
                 deps=tuple(str(f) for f in job.input), params=names, outs=tuple(str(f) for f in job.output),
                 threads=int(job.threads), logs=tuple(str(f) for f in job.log))


@contextlib.contextmanager
def _quiet_snakemake():
    """Snakemake logs its DAG building at INFO; a generator or a sync step should print nothing of it."""
    logging.disable(logging.INFO)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        logging.disable(logging.NOTSET)


def jobs(targets: list[str], workdir: Path = Path("."), snakefile: Path | None = None,
         configfiles: list[Path] | None = None, cores: int = 2) -> tuple[list[Stage], set[str]]:
    """The stages of every job the ``targets`` need, in a topological order, and the names of those
    Snakemake would run now (missing or out-of-date outputs, by its default rerun triggers).

    ``cores`` fixes the threads of rules that ask for ``workflow.cores`` (Table 4's latency)."""
    from snakemake.api import SnakemakeApi
    from snakemake.settings.enums import Quietness
    from snakemake.settings.types import ConfigSettings, DAGSettings, OutputSettings, ResourceSettings

    workdir = Path(workdir).resolve()
    snakefile = (Path(snakefile) if snakefile else workdir / "Snakefile").resolve()
    config = ConfigSettings(configfiles=[Path(c).resolve() for c in configfiles or []])
    try:
        with _quiet_snakemake(), SnakemakeApi(OutputSettings(quiet={Quietness.ALL})) as api:
            wapi = api.workflow(resource_settings=ResourceSettings(cores=cores), config_settings=config,
                                snakefile=snakefile, workdir=workdir)
            wf = wapi._workflow  # the API builds a DAG only to execute or print it; we read its jobs
            wf.dag_settings = DAGSettings(targets=frozenset(targets))
            wf._prepare_dag(forceall=False, ignore_incomplete=True, lock_warn_only=True)
            wf._build_dag()
            dag = wf.dag
            stages, stale = [], set()
            for level in dag.toposorted():  # a stable order: levels, then names
                for s, j in sorted(((_stage(j), j) for j in level if not j.rule.norun), key=lambda t: t[0].name):
                    stages.append(s)
                    if dag.needrun(j):
                        stale.add(s.name)
    except PipelineError:
        raise
    except Exception as e:  # snakemake's own errors carry the rule and file
        raise PipelineError(f"{snakefile}: Snakemake could not build the DAG of {targets}: {e}") from e
    seen: dict[str, Stage] = {}
    for s in stages:
        if s.name in seen and seen[s.name] != s:
            raise PipelineError(f"two jobs map to the DVC stage name {s.name!r}")
        seen[s.name] = s
    return list(seen.values()), stale
