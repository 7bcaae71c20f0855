"""Linear probe of R2ec's backbone (a benchmark, not a test): do the FROZEN user and item states carry more than
popularity?

R2ec's default head scores ``cos(h_user, h_item) / tau + w log p(item)`` and learns only through LoRA, one pass
over the users it samples. This script instead freezes the backbone (the base model, no adapter: what every R2ec
run starts from), computes the ``<answer>`` user states of ``--train-users`` seeded train samples once, and fits
a low-rank bilinear readout on them with the same popularity prior and a full-catalogue softmax::

    s(u, i) = (A^T z_u) . (B^T z_i) + w log p(i),   z = per-dimension standardised state (users and items apart)

(``--tied``: A = B, one projection for both sides, as R2ec's shared encoder). Each (rank, weight decay) arm is
full-batch Adam for ``--epochs`` epochs, selected on ``--valid-samples`` seeded valid samples and evaluated by the
shared evaluator on the shared test subsample (``eval.max_samples``); the table adds a paired one-sided Wilcoxon
p-value of test N@10 against the prior alone. Example (the README's probe)::

    python benchmarks/r2ec_probe.py --data results/data/movielens-100k --cache results/cache --threads 2 \\
        --train-users 3000 --json benchmarks/results/r2ec_probe.json

``--states F --fit-users N`` refits on a random N of the cached users (the readout's budget ablation).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--data", default="results/data/movielens-100k")
    ap.add_argument("--cache", default="results/cache")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("-S", dest="over", action="append", default=[], help="params override")
    ap.add_argument("--train-users", type=int, default=3000, help="seeded train samples the readout is fit on")
    ap.add_argument("--valid-samples", type=int, default=500, help="seeded valid samples for arm selection")
    ap.add_argument("--ranks", default="8,16,32", help="comma-separated projection ranks")
    ap.add_argument("--wds", default="0.001,0.01,0.1", help="comma-separated Adam weight decays")
    ap.add_argument("--fit-users", type=int, default=0,
                    help="fit on a seeded random subset of this many of the train users (0 = all; with --states, "
                         "a budget ablation on one set of cached states)")
    ap.add_argument("--epochs", type=int, default=300)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--tied", action="store_true", help="one projection for users and items (A = B)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--states", type=Path, help="file caching the frozen states (read when it exists)")
    ap.add_argument("--reasoning", type=int, default=-1,
                    help=">= 0: also score greedy-reasoning states (r2ec_zeroshot) of valid/test, standardised "
                         "with the stats of this many reasoning train users (0: the no-reasoning stats)")
    args = ap.parse_args()
    if args.fit_users < 0:
        ap.error(f"--fit-users must be >= 0, got {args.fit_users}")

    from r2ec import config as C
    from r2ec.eval.evaluator import evaluate, evaluation_samples
    from r2ec.io import load_dataset
    from r2ec.recpo.trainer import _Trainer
    from r2ec.report.significance import paired_tests
    if args.threads:
        torch.set_num_threads(args.threads)
    p = C.load(args.params, args.over)
    ds = load_dataset(Path(args.data))
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        tr = _Trainer("r2ec_no_reasoning", ds, p, Path(tmp), Path(args.cache), False, False, None)
        tr.refresh_table()
        items = tr.table.float()
        train = ds.split("train")
        rng = np.random.default_rng(args.seed)
        rows = train[np.sort(rng.choice(train.height, min(args.train_users, train.height), replace=False)).tolist()]
        ecfg = dataclasses.replace(p.eval, valid_max_samples=args.valid_samples)
        valid, test = evaluation_samples(ds, "valid", ecfg), evaluation_samples(ds, "test", p.eval)
        if args.states is not None and args.states.exists():
            st = torch.load(args.states)
        else:
            st = {"users": tr.user_states(rows), "v": tr.user_states(valid), "t": tr.user_states(test)}
        users, v_users, t_users = st["users"], st["v"], st["t"]
        prior = tr.log_prior()
        if args.reasoning >= 0 and "rv" not in st:
            rt = _Trainer("r2ec_zeroshot", ds, p, Path(tmp) / "zs", Path(args.cache), False, False, None)
            rt.refresh_table()
            st["rv"], st["rt"] = rt.user_states(valid), rt.user_states(test)
            st["rtrain"] = rt.user_states(rows[:args.reasoning]) if args.reasoning else None
            del rt
        if args.states is not None:
            torch.save(st, args.states)
    state_s = time.perf_counter() - t0
    if 0 < args.fit_users < users.shape[0]:  # random, not the first N: the rows are in (temporal) sample order
        keep = np.sort(np.random.default_rng([args.seed, 1]).choice(users.shape[0], args.fit_users, replace=False))
        users, rows = users[torch.as_tensor(keep)], rows[keep.tolist()]
    prior = torch.zeros(items.shape[0]) if prior is None else prior.float()
    mu_u, sd_u = users.mean(0), users.std(0) + 1e-6
    mu_i, sd_i = items[1:].mean(0), items[1:].std(0) + 1e-6
    z_items = (items - mu_i) / sd_i
    target = torch.as_tensor(rows["target_item_id"].to_list())

    def scores(a, b, u, stats=None):
        mu, sd = stats if stats is not None else (mu_u, sd_u)
        s = (((u - mu) / sd) @ a) @ (z_items @ b).T + prior
        s[:, 0] = float("-inf")
        return s

    def run_eval(a, b, split, df, u, stats=None):
        by_id = {sid: k for k, sid in enumerate(df["sample_id"].to_list())}

        def scorer(batch):
            idx = torch.as_tensor([by_id[s] for s in batch["sample_id"].to_list()])
            return scores(a, b, u[idx], stats)
        return evaluate(scorer, ds, split, ecfg if split == "valid" else p.eval, samples=df, progress=False)

    H = items.shape[1]
    zero = torch.zeros(H, 1)
    arms = [{"arm": "prior only", "rank": 0, "wd": 0.0, "a": zero, "b": zero, "fit_s": 0.0, "train_loss": None}]
    for rank in [int(x) for x in args.ranks.split(",")]:
        for wd in [float(x) for x in args.wds.split(",")]:
            g = torch.Generator().manual_seed(args.seed)
            a = torch.nn.Parameter(0.01 * torch.randn(H, rank, generator=g))
            b = a if args.tied else torch.nn.Parameter(0.01 * torch.randn(H, rank, generator=g))
            opt = torch.optim.Adam(list({id(x): x for x in (a, b)}.values()), lr=args.lr, weight_decay=wd)
            t1 = time.perf_counter()
            for _ in range(args.epochs):
                loss = torch.nn.functional.cross_entropy(scores(a, b, users), target)
                opt.zero_grad()
                loss.backward()
                opt.step()
            arms.append({"arm": f"rank {rank}, wd {wd:g}", "rank": rank, "wd": wd, "a": a.detach(),
                         "b": b.detach(), "fit_s": time.perf_counter() - t1, "train_loss": loss.item()})
    out, ranks = [], {}
    for arm in arms:
        vm, vr = run_eval(arm["a"], arm["b"], "valid", valid, v_users)
        tm, tr_ranks = run_eval(arm["a"], arm["b"], "test", test, t_users)
        ranks[arm["arm"]] = tr_ranks.sort("sample_id")["rank"].to_numpy()
        out.append({"arm": arm["arm"], "train loss": arm["train_loss"], "valid N@10": vm["N@10"],
                    "valid N@all": float(np.mean(1 / np.log2(vr["rank"].to_numpy() + 1))),
                    "test N@10": tm["N@10"], "test H@10": tm["H@10"], "test N@20": tm["N@20"],
                    "median test rank": float(np.median(ranks[arm["arm"]])), "fit s": round(arm["fit_s"], 1)})
        if "rt" in st:  # the same readout on greedy-reasoning states (zero-shot R2ec's user vectors)
            rtr = st.get("rtrain")
            rstats = None if rtr is None else (rtr.mean(0), rtr.std(0) + 1e-6)
            rvm, _ = run_eval(arm["a"], arm["b"], "valid", valid, st["rv"], rstats)
            rtm, rr = run_eval(arm["a"], arm["b"], "test", test, st["rt"], rstats)
            ranks["R " + arm["arm"]] = rr.sort("sample_id")["rank"].to_numpy()
            out[-1].update({"reasoning valid N@10": rvm["N@10"], "reasoning test N@10": rtm["N@10"],
                            "reasoning median rank": float(np.median(ranks["R " + arm["arm"]]))})
    for row in out:
        row["p (> prior only)"] = paired_tests(ranks[row["arm"]], ranks["prior only"], "N@10")["wilcoxon_p"]
        if "R " + row["arm"] in ranks:
            row["reasoning p"] = paired_tests(ranks["R " + row["arm"]], ranks["prior only"], "N@10")["wilcoxon_p"]
    best = max(out[1:], key=lambda r: (r["valid N@10"], r["valid N@all"])) if len(out) > 1 else out[0]
    print(f"frozen states of {users.shape[0]} train / {valid.height} valid / {test.height} test users in "
          f"{state_s:.0f} s; tied={args.tied}; selected on valid: {best['arm']}")
    cols = list(out[0])
    print(" | ".join(cols))
    print(" | ".join("---" for _ in cols))
    for row in out:
        print(" | ".join("–" if row[c] is None else f"{row[c]:.4f}" if isinstance(row[c], float) else str(row[c])
                         for c in cols))
    if args.json:
        args.json.write_text(json.dumps({"train_users": int(users.shape[0]), "tied": args.tied,
                                         "selected": best["arm"], "state_s": state_s, "arms": out}, indent=2))


if __name__ == "__main__":
    main()
