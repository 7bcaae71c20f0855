"""Does RecPO learn? (a benchmark, not a test) RecPO against a shuffled-advantage control on a fixed user pool.

The overfitting check every RL implementation should pass: RecPO (method ``r2ec``) trains for ``--steps`` steps
on a fixed pool of ``--users`` training samples (``recpo.train_max_samples``: the pool IS the training data),
and the pool's per-user fused reward (``(1 - beta) NDCG@k_r + beta softmax-prob``, history masked, as the
training reward) and N@10 of the target's rank are measured with GREEDY reasoning before and after. The control
arm is identical (same params, seed, warm start, batches) except ``recpo.shuffle_advantages=true``: the token
loss gets the step's advantages shuffled across its trajectories while the item loss keeps the true ones, so the
difference between the arms is what RL on the reasoning adds. Example::

    python benchmarks/recpo_learning.py --data results/data/movielens-100k --cache results/cache \\
        --users 32 --steps 40 -S llm.threads=1 -S recpo.warm_start= -S readout.rank=0

Writes ``--out`` (default ``benchmarks/results/recpo_learning-<machine>-<date>.json``: the command, date,
machine, params, per arm the per-step training records (the sampled batch's reward and the step diagnostics),
the greedy pool reward / N@10 every ``--eval-every`` steps, per-user before/after reward, N@10 and rank) and a
PNG of both arms' curves next to it. ``p_rise``: paired one-sided Wilcoxon (scipy) of the RecPO arm's per-user
reward after > before; ``p_vs_control``: RecPO after > control after (the issue's bar: p_rise < 0.01 and
p_vs_control < 0.05 within 30 minutes on 2 cores). With ``recpo.warm_start`` set, the warm-start run is
trained once under ``--work`` (or taken from ``--warm DIR``) and both arms start from it.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch

ARMS = (("recpo", False), ("control", True))  # (name, recpo.shuffle_advantages)
CURVE_KEYS = ("reward", "reward_std", "reward_ndcg", "reward_prob", "reward_best", "flat_group_frac",
              "flat_rank_frac", "adv_abs_mean", "adv_shuffled_frac", "token_loss", "item_loss", "ratio_mean",
              "clip_frac", "kl_ref", "entropy", "reasoning_len", "forced_frac", "cut_frac", "grad_norm",
              "mean_rank", "seconds")


def pool_eval(tr, pool) -> dict[str, list]:
    """Per-user fused reward, N@10 and rank of the pool's targets with greedy reasoning (the current weights;
    the item table refreshed first; the global random streams untouched)."""
    from r2ec.recpo.rewards import rewards_from_scores
    tr.before_evaluate()
    with torch.no_grad(), torch.random.fork_rng(devices=[]):
        scores = tr.scorer(pool)
    r, _, _, ranks = rewards_from_scores(scores, pool["target_item_id"].to_list(),
                                         pool["history_item_ids"].to_list(), tr.beta, tr.rc.k_r)
    rk = ranks.float()
    n10 = torch.where(rk <= 10, 1.0 / torch.log2(rk + 1.0), torch.zeros_like(rk))
    return {"reward": r.tolist(), "N@10": n10.tolist(), "rank": ranks.tolist()}


def _mean(d: dict[str, list]) -> dict[str, float]:
    return {"reward": float(np.mean(d["reward"])), "N@10": float(np.mean(d["N@10"])),
            "median_rank": float(np.median(d["rank"]))}


def run_arm(p, ds, cache: Path | None, run_dir: Path, steps: int, eval_every: int, log=print) -> dict:
    """One arm: the trainer as ``train_r2ec`` builds it, its fresh start (warm start), ``steps`` steps of the
    harness's seeded batches over the pool, greedy pool evaluations."""
    from r2ec.recpo.trainer import _Trainer
    from r2ec.train.harness import seed_all, step_seed
    t0 = time.perf_counter()
    tr = _Trainer("r2ec", ds, p, run_dir, cache, progress=False, use_dvclive=False, hook=None)
    tr.on_fresh_start()
    pool = tr.train_pool()
    before = pool_eval(tr, pool)
    pool_curve = [{"step": 0, **_mean(before)}]
    curve = []
    ts = time.perf_counter()
    for _ in range(steps):
        t = time.perf_counter()
        seed_all(step_seed(tr.rc.seed, tr.step, 2))  # as the harness's train_loop
        rec = tr.train_step(tr.batch_rows(pool))
        rec["seconds"] = time.perf_counter() - t
        tr.step += 1
        curve.append({"step": tr.step, **{k: float(rec[k]) for k in CURVE_KEYS if k in rec}})
        log(f"  step {tr.step}: reward {rec['reward']:.4f} flat {rec['flat_group_frac']:.2f} "
            f"kl_ref {rec['kl_ref']:.2e} entropy {rec['entropy']:.2f} len {rec['reasoning_len']:.1f}")
        if eval_every and tr.step % eval_every == 0 and tr.step < steps:
            pool_curve.append({"step": tr.step, **_mean(pool_eval(tr, pool))})
    train_s = time.perf_counter() - ts
    after = pool_eval(tr, pool)
    pool_curve.append({"step": tr.step, **_mean(after)})
    out = {"curve": curve, "pool_curve": pool_curve, "before": before, "after": after,
           "sample_ids": pool["sample_id"].to_list(), "train_minutes": train_s / 60,
           "minutes": (time.perf_counter() - t0) / 60}
    del tr
    return out


def wilcoxon_greater(x, y) -> float:
    """Paired one-sided Wilcoxon signed-rank p-value of ``x > y`` (1.0 when every pair is equal)."""
    from scipy.stats import wilcoxon
    d = np.asarray(x, dtype=float) - np.asarray(y, dtype=float)
    if not np.any(d != 0):
        return 1.0
    return float(wilcoxon(d, alternative="greater").pvalue)


def figure(res: dict, out: Path) -> Path:
    """Both arms' curves: the sampled batch reward per step, the greedy pool reward and N@10."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(1, 3, figsize=(15, 3.8))
    for name, arm in res["arms"].items():
        c, pc = arm["curve"], arm["pool_curve"]
        if c:
            ax[0].plot([x["step"] for x in c], [x["reward"] for x in c], lw=1, marker=".", label=name)
        ax[1].plot([x["step"] for x in pc], [x["reward"] for x in pc], marker="o", label=name)
        ax[2].plot([x["step"] for x in pc], [x["N@10"] for x in pc], marker="o", label=name)
    for a, title in zip(ax, ["sampled batch reward (train)", f"pool reward, greedy ({res['users']} users)",
                             "pool N@10, greedy"]):
        a.set_title(title, fontsize=10)
        a.set_xlabel("step")
        a.grid(alpha=0.3)
        a.legend(fontsize=8)
    fig.suptitle(f"RecPO vs shuffled-advantage control: p_rise={res['p_rise']:.3g}, "
                 f"p_vs_control={res['p_vs_control']:.3g}", fontsize=10)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("-S", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--data", default="results/data/movielens-100k")
    ap.add_argument("--cache", default="results/cache")
    ap.add_argument("--users", type=int, default=32, help="training users of the fixed pool (recpo.train_max_samples)")
    ap.add_argument("--steps", type=int, default=40, help="RecPO steps per arm")
    ap.add_argument("--eval-every", type=int, default=10, help="greedy pool evaluation every N steps (0 = "
                    "before and after only)")
    ap.add_argument("--work", type=Path, default=Path("/tmp/recpo_learning"), help="run directories")
    ap.add_argument("--warm", type=Path, help="an existing run directory of recpo.warm_start to start from")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--out", type=Path, help="JSON (default benchmarks/results/recpo_learning-<machine>-<date>"
                                             ".json); the PNG goes next to it")
    a = ap.parse_args(argv)
    if a.users < 1 or a.steps < 1 or a.eval_every < 0:
        ap.error("--users and --steps must be >= 1, --eval-every >= 0")

    from r2ec import config as C
    from r2ec.io import load_dataset
    from r2ec.recpo.trainer import train_r2ec
    if a.threads:
        torch.set_num_threads(a.threads)
    t0 = time.perf_counter()
    ds = load_dataset(a.data)
    over = a.overrides + [f"recpo.train_max_samples={a.users}"]
    params = {name: C.load(a.params, over + [f"recpo.shuffle_advantages={str(sh).lower()}"]) for name, sh in ARMS}
    p0 = params["recpo"]
    if p0.recpo.batch_size > a.users:
        ap.error(f"recpo.batch_size={p0.recpo.batch_size} exceeds --users {a.users}")
    cache = Path(a.cache) if a.cache else None
    a.work.mkdir(parents=True, exist_ok=True)
    if p0.recpo.warm_start:  # both arms start from the same warm-start run (a sibling of their run dirs)
        src = a.work / p0.recpo.warm_start
        if a.warm is not None and not src.exists():
            shutil.copytree(a.warm, src)
        if not (src / "best" / "trainable.pt").exists():
            train_r2ec(p0.recpo.warm_start, ds, p0, src, cache, progress=False, dvclive=False)
    arms = {}
    for name, _ in ARMS:
        print(f"== {name}", flush=True)
        run = a.work / name
        shutil.rmtree(run, ignore_errors=True)
        arms[name] = run_arm(params[name], ds, cache, run, a.steps, a.eval_every)
    rp, ct = arms["recpo"], arms["control"]
    date = datetime.date.today().isoformat()
    machine = "gpu" if torch.cuda.is_available() else "cpu"
    res = {
        "command": " ".join(shlex.quote(x) for x in ([sys.argv[0]] + (argv if argv is not None else sys.argv[1:]))),
        "date": date,
        "machine": {"kind": machine, "hostname": platform.node(), "platform": platform.platform(),
                    "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads()},
        "params": C.to_dict(p0), "users": a.users, "steps": a.steps, "eval_every": a.eval_every,
        "same_start": rp["before"] == ct["before"],
        "p_rise": wilcoxon_greater(rp["after"]["reward"], rp["before"]["reward"]),
        "p_vs_control": wilcoxon_greater(rp["after"]["reward"], ct["after"]["reward"]),
        "p_rise_n10": wilcoxon_greater(rp["after"]["N@10"], rp["before"]["N@10"]),
        "p_vs_control_n10": wilcoxon_greater(rp["after"]["N@10"], ct["after"]["N@10"]),
        "p_rise_control": wilcoxon_greater(ct["after"]["reward"], ct["before"]["reward"]),
        "summary": {name: {"before": _mean(arm["before"]), "after": _mean(arm["after"]),
                           "minutes": arm["minutes"]} for name, arm in arms.items()},
        "minutes": (time.perf_counter() - t0) / 60,
        "arms": arms,
    }
    out = a.out or Path("benchmarks/results") / f"recpo_learning-{machine}-{date}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1) + "\n")
    res["figure"] = str(figure(res, out.with_suffix(".png")))
    for name, s in res["summary"].items():
        print(f"{name:8s} reward {s['before']['reward']:.4f} -> {s['after']['reward']:.4f}  "
              f"N@10 {s['before']['N@10']:.4f} -> {s['after']['N@10']:.4f}  ({s['minutes']:.1f} min)")
    print(f"p_rise={res['p_rise']:.4g} p_vs_control={res['p_vs_control']:.4g} -> {out}")
    return res


if __name__ == "__main__":
    main()
