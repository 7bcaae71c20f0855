"""BigRec grounding with popularity (``bigrec.popularity_gamma``) on a trained BigRec run, against the reference
rows on the same samples: one decode per sample, every gamma scored from it.

    python benchmarks/bigrec_grounding.py --run results/runs/movielens-100k/bigrec \
        --data results/data/movielens-100k --valid 300 --test 1000 --gammas 0 1 2 5 10 20 50

Prints a table: N@10 / H@10 / median rank per gamma on valid and test, Popularity and Random on the same test
samples, and one-sided paired tests (t-test and Wilcoxon on per-sample N@10) of the valid-picked gamma's test
ranks against Random and Popularity, plus the exact-match share of the generations.

``--generations RUN/test_generations.jsonl`` grounds the generations a run already wrote (its test samples)
instead of decoding them again; with ``--valid 0`` the valid split is skipped and ``--pick`` names the gamma
(e.g. the one the run's metrics.json reports).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import numpy as np
import torch

from r2ec import config as C
from r2ec.io import load_dataset


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", required=True, help="a trained BigRec run (its best/ adapter is decoded)")
    ap.add_argument("--data", required=True)
    ap.add_argument("--cache", default="results/cache")
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("-S", dest="overrides", action="append", default=[])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--valid", type=int, default=300, help="valid samples that pick gamma")
    ap.add_argument("--test", type=int, default=1000, help="test samples (the shared subsample's seed)")
    ap.add_argument("--gammas", type=float, nargs="+", default=[0, 1, 2, 5, 10, 20, 50])
    ap.add_argument("--generations", type=Path, help="test_generations.jsonl of the run: ground these, no decode")
    ap.add_argument("--pick", type=float, help="the gamma tested against the references when --valid 0")
    args = ap.parse_args()
    if args.valid <= 0 and args.pick is None:
        ap.error("--valid 0 needs --pick GAMMA (the gamma tested against the references)")
    if args.generations is not None and not args.generations.is_file():
        ap.error(f"--generations {args.generations}: no such file")
    given = {}
    if args.generations is not None:
        for n, line in enumerate(args.generations.read_text().splitlines(), 1):
            try:
                g = json.loads(line)
                given[int(g["sample_id"])] = {"generated": str(g["generated"]), "target": g["target"],
                                              "valid": bool(g["valid"])}
            except (ValueError, KeyError, TypeError) as e:
                raise SystemExit(f"{args.generations}:{n}: not a generation record ({e!r}); expected sample_id, "
                                 f"generated, target, valid")
    torch.set_num_threads(args.threads)
    from r2ec.baselines.bigrec import _BigRec
    from r2ec.baselines.reference import popularity_scorer, random_scorer
    from r2ec.data.popularity import popularity_counts
    from r2ec.eval.evaluator import evaluate, evaluation_samples
    from r2ec.eval.metrics import ndcg_at_k
    from r2ec.train.harness import LLMHarness
    from r2ec.report.significance import paired_tests

    p = C.load(args.params, args.overrides)
    p = dataclasses.replace(p, eval=dataclasses.replace(p.eval, max_samples=args.test,
                                                        valid_max_samples=args.valid))
    ds = load_dataset(args.data)
    tr = _BigRec(ds, p, Path(args.run), Path(args.cache), False, False, None)
    if tr.load_best() is None:
        raise SystemExit(f"{args.run}/best: no trained adapter")
    rows, ranks = [], {}
    for split in ("valid", "test") if args.valid > 0 else ("test",):
        tr.generated, n_gen = {}, len(tr.generations)
        if split == "test" and given:
            sids = list(given)
            tr.generated = dict(zip(sids, tr.embed([given[s]["generated"] for s in sids])))
            tr.generations += [given[s] for s in sids]
            missing = set(evaluation_samples(ds, "test", p.eval)["sample_id"].to_list()) - set(sids)
            if missing:
                raise SystemExit(f"{args.generations}: no generation for {len(missing)} test samples "
                                 f"(run with the same eval.max_samples)")
        for g in args.gammas:
            tr.value = g
            m, r = LLMHarness.evaluate(tr, split)
            ranks[split, g] = r["rank"].to_numpy()
            rows.append({"split": split, "method": f"bigrec gamma={g:g}", "N@10": m["N@10"], "H@10": m["H@10"],
                         "median_rank": float(np.median(ranks[split, g])), "n": m["n_samples"]})
        gens = tr.generations[n_gen:]
        rows.append({"split": split, "method": "exact-match generations",
                     "share": sum(x["generated"] == x["target"] for x in gens) / max(len(gens), 1),
                     "valid_titles": sum(x["valid"] for x in gens) / max(len(gens), 1)})
    ref = {"popularity": popularity_scorer(popularity_counts(ds.split("train"), ds.n_items)),
           "random": random_scorer(ds.n_items, p.random.seed)}
    for name, scorer in ref.items():
        m, r = evaluate(scorer, ds, "test", p.eval, progress=False)
        ranks["test", name] = r["rank"].to_numpy()
        rows.append({"split": "test", "method": name, "N@10": m["N@10"], "H@10": m["H@10"],
                     "median_rank": float(np.median(ranks["test", name])), "n": m["n_samples"]})
    # the harness's rule: best valid N@10, the first candidate on ties
    best = args.pick if args.valid <= 0 else max(
        args.gammas, key=lambda g: (ndcg_at_k(ranks["valid", g], 10).mean(), -args.gammas.index(g)))
    pairs = [(best, "random"), (best, "popularity")] + ([(0.0, "random")] if 0.0 in args.gammas else [])
    for g, name in pairs:
        t = paired_tests(ranks["test", g], ranks["test", name], "N@10", "greater")
        rows.append({"split": "test", "method": f"gamma={g:g} > {name}", "ttest_p": t["ttest_p"],
                     "wilcoxon_p": t["wilcoxon_p"]})
    print(f"valid-picked gamma: {best:g}")
    for r in rows:
        print(json.dumps({k: (round(v, 5) if isinstance(v, float) else v) for k, v in r.items()}))


if __name__ == "__main__":
    main()
