"""The reasoning gap (a benchmark, not a test): R2ec at its start against R2ec w/o reasoning, by reasoning length.

R2ec's reasoning variants start from ``r2ec_no_reasoning`` (``recpo.warm_start``): same adapter, same item
table, and a users-only readout map distilled from the after-reasoning states of ``readout.distill_users``
fitting users onto their no-reasoning projections. Everything R2ec loses or gains against w/o reasoning before
RecPO's first step is therefore the reasoning itself: the state read at ``<answer>`` after ``L`` greedy tokens,
and how well a linear map recovers what the readout reads from it. For every ``--lengths L`` and
``--distill-users N`` this trains ``r2ec`` with ``recpo.steps=0`` (no RecPO step), ``recpo.max_reasoning_tokens=L``
and ``readout.distill_users=N``, warm-started from ``--runs``'s ``r2ec_no_reasoning``, evaluates it with the shared
evaluator on the shared test subsample and tests it against ``--runs``'s ``r2ec_no_reasoning`` and ``popularity``
(paired one-sided Wilcoxon on per-sample N@10). Example (the default job's runs)::

    python benchmarks/reasoning_gap.py --runs results/runs/movielens-100k --work /tmp/gap \\
        --lengths 2 4 8 16 24 --distill-users 1000 --threads 1 -S llm.threads=1

Each arm trains into ``--work/L<L>-d<N>/`` and is skipped when its ``metrics.json`` exists (a killed sweep
resumes). Writes ``--out`` (default ``benchmarks/results/reasoning_gap-<machine>-<date>.json``: command, date,
machine, one row per arm and the two reference rows) and a PNG of test N@10 against ``L`` next to it.
"""

from __future__ import annotations

import datetime
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import base_parser, cache_of, command, figure_axes, load_params, machine, save_png  # noqa: E402

REFERENCES = ("r2ec_no_reasoning", "popularity")


def metrics_of(test: dict) -> dict:
    return {k: v for k, v in test.items() if k[:2] in ("N@", "H@") or k == "n_samples"}


def arm_row(run: Path, runs: Path) -> dict:
    """One arm's test metrics, distillation record and tests against the reference runs in ``runs``."""
    from r2ec.report.significance import paired_ranks, paired_tests
    m = json.loads((run / "metrics.json").read_text())
    # paired_ranks aligns the samples and refuses runs evaluated on different ones
    _, ranks, no_reasoning = paired_ranks(run, runs / "r2ec_no_reasoning")
    _, _, popularity = paired_ranks(run, runs / "popularity")
    row = {"run": run.name, "test": metrics_of(m["test"]), "median_rank": float(np.median(ranks))}
    distill = run / "readout_distill.json"
    if distill.exists():
        row["distill"] = json.loads(distill.read_text())
    row["p_no_reasoning_better"] = paired_tests(no_reasoning, ranks, "N@10", "greater")["wilcoxon_p"]
    row["p_above_popularity"] = paired_tests(ranks, popularity, "N@10", "greater")["wilcoxon_p"]
    return row


def figure(res: dict, out: Path) -> str:
    fig, ax = figure_axes((6, 3.6))
    ref = res["references"]
    for n in sorted({a["distill_users"] for a in res["arms"]}):
        arms = sorted((a for a in res["arms"] if a["distill_users"] == n), key=lambda a: a["max_reasoning_tokens"])
        xs = [0] + [a["max_reasoning_tokens"] for a in arms]
        ys = [ref["r2ec_no_reasoning"]["N@10"]] + [a["test"]["N@10"] for a in arms]
        ax.plot(xs, ys, marker="o", label=f"R²ec at its start, readout map on {n} users")
    ax.axhline(ref["r2ec_no_reasoning"]["N@10"], ls="--", c="k", lw=1, label="R²ec w/o reasoning")
    ax.axhline(ref["popularity"]["N@10"], ls=":", c="grey", lw=1, label="Popularity")
    ax.set_xlabel("reasoning tokens (recpo.max_reasoning_tokens)")
    ax.set_ylabel(f"test N@10 ({ref['popularity']['n_samples']} samples)")
    ax.legend(fontsize=7)
    return save_png(fig, out)


def main(argv: list[str] | None = None) -> dict:
    ap = base_parser(__doc__)
    ap.add_argument("--runs", type=Path, default=Path("results/runs/movielens-100k"),
                    help="a finished job's run folder holding r2ec_no_reasoning and popularity")
    ap.add_argument("--lengths", type=int, nargs="+", required=True, help="recpo.max_reasoning_tokens values")
    ap.add_argument("--distill-users", type=int, nargs="+", help="readout.distill_users values (default: params)")
    ap.add_argument("--work", type=Path, required=True, help="run folders of the arms")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--out", type=Path)
    a = ap.parse_args(argv)
    import torch

    from r2ec.io import load_dataset
    from r2ec.recpo.trainer import train_r2ec
    if a.threads:
        torch.set_num_threads(a.threads)
    missing = [r for r in REFERENCES if not (a.runs / r / "ranks.parquet").exists()]
    if missing:
        raise SystemExit(f"{a.runs}: no finished {', '.join(missing)} run (run the job first)")
    if any(x <= 0 for x in a.lengths):
        raise SystemExit("--lengths: reasoning lengths must be positive (0 is the w/o reasoning reference)")
    base = load_params(a)
    if not base.recpo.warm_start:
        raise SystemExit("recpo.warm_start is '': the gap is measured from the w/o reasoning run's start")
    users = a.distill_users or [base.readout.distill_users]
    a.work.mkdir(parents=True, exist_ok=True)
    warm = a.work / base.recpo.warm_start
    if not warm.exists():
        warm.symlink_to((a.runs / base.recpo.warm_start).resolve(), target_is_directory=True)
    ds = load_dataset(Path(a.data))
    arms = []
    for n in users:
        for length in a.lengths:
            run = a.work / f"L{length}-d{n}"
            t0 = time.perf_counter()
            if not (run / "metrics.json").exists():
                p = load_params(a, [f"recpo.max_reasoning_tokens={length}", "recpo.steps=0",
                                    f"readout.distill_users={n}"])
                train_r2ec("r2ec", ds, p, run, cache_of(a), progress=False)
            row = {"max_reasoning_tokens": length, "distill_users": n, **arm_row(run, a.runs),
                   "wall_s": round(time.perf_counter() - t0, 1)}
            arms.append(row)
            print(f"L={length} N={n}: test N@10 {row['test']['N@10']:.4f} (R^2 "
                  f"{row.get('distill', {}).get('r2', float('nan')):.3f}); w/o reasoning better p = "
                  f"{row['p_no_reasoning_better']:.3g}, above Popularity p = {row['p_above_popularity']:.3g}",
                  flush=True)
    references = {}
    for r in REFERENCES:
        m = json.loads((a.runs / r / "metrics.json").read_text())["test"]
        references[r] = metrics_of(m)
    res = {"benchmark": "reasoning_gap", "command": command(argv),
           "date": datetime.date.today().isoformat(), "machine": machine() | {"torch_threads": torch.get_num_threads()},
           "runs": str(a.runs), "references": references, "arms": arms}
    out = a.out or Path("benchmarks/results") / f"reasoning_gap-{res['machine']['kind']}-{res['date']}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2) + "\n")
    res["figure"] = str(figure(res, out))
    print(f"wrote {out} and {res['figure']}")
    return res


if __name__ == "__main__":
    main()
