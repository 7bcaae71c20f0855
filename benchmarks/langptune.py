"""LangPTune at CPU scale against its floors and its zero-shot pipeline, on one shared test subsample.

Trains nothing itself: it reads run directories written by ``python -m r2ec train`` and prints test H@10 / N@10,
the training rounds and wall time, the profile length and a few greedy test profiles. Produce the runs with
(one torch thread each; ``-S eval.max_samples=1000`` for every run so the test samples are identical)::

    D=results/data/movielens-100k; S="-S eval.max_samples=1000"
    python -m r2ec train --threads 1 --method langptune --data $D --out /tmp/lp/runs/langptune $S
    python -m r2ec train --threads 1 --method langptune --data $D --out /tmp/lp/runs/zeroshot $S \\
        -S langptune.steps=0
    python -m r2ec train --threads 1 --method popularity --data $D --out /tmp/lp/runs/popularity $S
    python -m r2ec train --threads 1 --method random --data $D --out /tmp/lp/runs/random $S
    python benchmarks/langptune.py --runs /tmp/lp/runs
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

ROWS = ("random", "popularity", "zeroshot", "langptune")


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.open()] if path.exists() else []


def summary(run: Path) -> dict:
    m = json.loads((run / "metrics.json").read_text())["test"]
    train = _jsonl(run / "train_log.jsonl")
    valid = _jsonl(run / "valid_log.jsonl")
    out = {"H@10": m["H@10"], "N@10": m["N@10"], "n": m["n_samples"], "rounds": len(train),
           "train_min": (train[-1]["elapsed_s"] / 60) if train else 0.0, "validations": len(valid)}
    if train:
        out["profile_len"] = train[-1].get("profile_len")
        out["round_s"] = sum(r["seconds"] for r in train) / len(train)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", default="/tmp/lp/runs", help="directory holding the runs named " + ", ".join(ROWS))
    ap.add_argument("--examples", type=int, default=3, help="greedy test profiles to print")
    args = ap.parse_args()
    runs = Path(args.runs)
    print(f"{'run':<12}{'H@10':>8}{'N@10':>8}{'n':>6}{'rounds':>8}{'train min':>11}{'s/round':>9}")
    for name in ROWS:
        if not (runs / name / "metrics.json").exists():
            print(f"{name:<12}  (no run)")
            continue
        s = summary(runs / name)
        print(f"{name:<12}{s['H@10']:>8.4f}{s['N@10']:>8.4f}{s['n']:>6}{s['rounds']:>8}{s['train_min']:>11.1f}"
              f"{s.get('round_s', 0.0):>9.1f}")
    for name in ("langptune", "zeroshot"):
        profiles = _jsonl(runs / name / "test_profiles.jsonl")[:args.examples]
        for p in profiles:
            print(f"\n[{name} sample {p['sample_id']}] {p['profile']}")


if __name__ == "__main__":
    main()
