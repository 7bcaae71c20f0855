"""LangPTune at CPU scale against its floors and its zero-shot pipeline, on one shared test subsample.

Trains nothing itself: it reads run directories written by ``python -m r2ec train`` and prints test H@10 / N@10 /
N@20, the median rank, the paired one-sided Wilcoxon p of N@10 against Popularity and against the zero-shot
pipeline, the training rounds and wall time, and a few greedy test profiles. Every directory under ``--runs``
holding a ``metrics.json`` is a row (``random``, ``popularity`` and ``zeroshot`` are the references). Produce the
runs with (one torch thread each; ``-S eval.max_samples=1000`` for every run so the test samples are identical)::

    D=results/data/movielens-100k; S="-S eval.max_samples=1000"
    python -m r2ec train --threads 1 --method langptune --data $D --out /tmp/lp/runs/langptune $S
    python -m r2ec train --threads 1 --method langptune --data $D --out /tmp/lp/runs/zeroshot $S \\
        -S langptune.steps=0
    python -m r2ec train --threads 1 --method popularity --data $D --out /tmp/lp/runs/popularity $S
    python -m r2ec train --threads 1 --method random --data $D --out /tmp/lp/runs/random $S
    python benchmarks/langptune.py --runs /tmp/lp/runs

Further arms are further directories, e.g. ``--out /tmp/lp/runs/prior_logq -S langptune.popularity_prior=1
-S langptune.logq_correction=true``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

REFERENCES = ("random", "popularity", "zeroshot")


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.open()] if path.exists() else []


def summary(run: Path) -> dict:
    m = json.loads((run / "metrics.json").read_text())["test"]
    train = _jsonl(run / "train_log.jsonl")
    valid = _jsonl(run / "valid_log.jsonl")
    out = {"H@10": m["H@10"], "N@10": m["N@10"], "N@20": m["N@20"], "n": m["n_samples"], "rounds": len(train),
           "train_min": (train[-1]["elapsed_s"] / 60) if train else 0.0, "validations": len(valid)}
    if train:
        out["profile_len"] = train[-1].get("profile_len")
        out["round_s"] = sum(r["seconds"] for r in train) / len(train)
    return out


def main() -> None:
    import numpy as np

    from r2ec.report.significance import paired_ranks, paired_tests
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", default="/tmp/lp/runs", help="directory holding one run directory per row")
    ap.add_argument("--examples", type=int, default=3, help="greedy test profiles to print per trained run")
    args = ap.parse_args()
    runs = Path(args.runs)
    names = sorted(d.name for d in runs.iterdir() if (d / "metrics.json").exists())
    names = [n for n in REFERENCES if n in names] + [n for n in names if n not in REFERENCES]
    print(f"{'run':<22}{'H@10':>8}{'N@10':>8}{'N@20':>8}{'median':>8}{'n':>6}{'p>pop':>8}{'p>zs':>8}"
          f"{'rounds':>8}{'train min':>11}{'s/round':>9}")
    for name in names:
        s = summary(runs / name)
        ps = []
        for ref in ("popularity", "zeroshot"):
            if ref == name or not (runs / ref / "metrics.json").exists():
                ps.append("")
                continue
            _, a, b = paired_ranks(runs / name, runs / ref)
            ps.append(f"{paired_tests(a, b, 'N@10')['wilcoxon_p']:.3f}")
        _, ranks, _ = paired_ranks(runs / name, runs / name)
        print(f"{name:<22}{s['H@10']:>8.4f}{s['N@10']:>8.4f}{s['N@20']:>8.4f}{np.median(ranks):>8.1f}{s['n']:>6}"
              f"{ps[0]:>8}{ps[1]:>8}{s['rounds']:>8}{s['train_min']:>11.1f}{s.get('round_s', 0.0):>9.1f}")
    for name in names:
        if name in ("random", "popularity"):
            continue
        for p in _jsonl(runs / name / "test_profiles.jsonl")[:args.examples]:
            print(f"\n[{name} sample {p['sample_id']}] {p['profile']}")


if __name__ == "__main__":
    main()
