"""Behaviour check for refactors: run the tiny end-to-end pipeline (the tests' Amazon-format fixture, every Table 1
method, step budgets only, so runs are deterministic) with the Snakefile and src/ of REPO, and write a digest of
every run's ranks.parquet. Two checkouts give equal digests when their ranking behaviour is the same.

    python benchmarks/tiny_ranks.py REPO OUTDIR            # -> OUTDIR/ranks.json
    python benchmarks/tiny_ranks.py REPO OUTDIR --against OTHER/ranks.json   # also compare, exit 1 on a difference
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import polars as pl
import yaml


def digest(runs: Path) -> dict[str, dict]:
    out = {}
    for f in sorted(runs.rglob("ranks.parquet")):
        df = pl.read_parquet(f).sort(["split", "sample_id"])
        rows = df.select("split", "sample_id", "rank").rows()
        out[str(f.relative_to(runs))] = {"sha": hashlib.sha256(json.dumps(rows).encode()).hexdigest()[:16],
                                         "ranks": df["rank"].to_list()}
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("repo", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--against", type=Path, help="a ranks.json to compare with")
    args = ap.parse_args(argv)
    repo, out = args.repo.resolve(), args.out.resolve()
    sys.path.insert(0, str(repo / "tests"))
    from fixtures.data_fixtures import serve
    from test_pipeline_smoke import _fixture, _tiny_params
    out.mkdir(parents=True, exist_ok=True)
    remote, work = out / "remote", out / "work"
    _fixture(remote)
    work.mkdir(exist_ok=True)
    env = dict(os.environ, PYTHONPATH=str(repo / "src"), OMP_NUM_THREADS="1",
               PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    with serve(remote) as (base, _):
        (work / "params.yaml").write_text(yaml.safe_dump(_tiny_params(base)))
        r = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(repo / "Snakefile"), "-d", str(work),
                            "--cores", "2", "results/table1.tex"], capture_output=True, text=True, env=env)
    if r.returncode:
        print(r.stdout[-3000:], r.stderr[-5000:])
        return 1
    d = digest(work / "results/runs")
    (out / "ranks.json").write_text(json.dumps(d, indent=1))
    print(json.dumps({k: v["sha"] for k, v in d.items()}, indent=1))
    if args.against:
        ref = json.loads(args.against.read_text())
        diff = sorted(k for k in set(ref) | set(d) if ref.get(k, {}).get("sha") != d.get(k, {}).get("sha"))
        print(f"{len(set(ref) | set(d)) - len(diff)} equal, {len(diff)} different: {diff}")
        return 1 if diff else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
