"""Does RecPO learn? (a benchmark, not a test) RecPO against a shuffled-advantage control on a fixed user pool.

The overfitting check every RL implementation should pass: RecPO (method ``r2ec``) trains for ``--steps`` steps
on a fixed pool of ``--users`` training samples (``recpo.train_max_samples``: the pool IS the training data),
and the pool's per-user fused reward (``(1 - beta) NDCG@k_r + beta softmax-prob``, history masked, as the
training reward) and N@10 of the target's rank are measured with GREEDY reasoning before and after. The control
arm is identical (same params, seed, warm start, batches) except ``recpo.shuffle_advantages=true``: the token
loss gets the step's advantages shuffled across its trajectories while the item loss keeps the true ones, so the
difference between the arms is what RL on the reasoning adds. Example::

    python benchmarks/recpo_learning.py --data results/data/movielens-100k --cache results/cache \\
        --users 16 --steps 180 --eval-every 0 --threads 1 --jobs 2 --sampled 4 -S llm.threads=1 \\
        -S recpo.warm_start= -S readout.rank=0 -S contrastive.steps=1 -S recpo.max_minutes=0 -S recpo.temperature=1.0 \\
        -S recpo.top_k=50 -S recpo.item_loss_coef=0 -S recpo.lr=3e-4 -S recpo.kl_coef=0.05 -S recpo.mu=2 \\
        -S recpo.batch_size=4

(4 users per step, as in every measured run: at the default 16 each step costs four times as much;
``-S recpo.seed=7`` for another pool and other rollouts; ``recpo.item_loss_coef=0``: RL on the reasoning alone, a
KL anchor to the base model and two update passes per rollout batch: the setting in which greedy reasoning follows
the sampled policy, ~29 minutes on 2 cores; ``--jobs 2``: the arms in two processes at once;
``--sampled 4``: also each user's mean reward over 4 sampled trajectories, the objective RL maximises, with
``p_rise_sampled`` / ``p_vs_control_sampled``.)

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
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import base_parser, cache_of, command, machine  # noqa: E402

ARMS = (("recpo", False), ("control", True))  # (name, recpo.shuffle_advantages)
CURVE_KEYS = ("reward", "reward_std", "reward_ndcg", "reward_prob", "reward_best", "flat_group_frac",
              "flat_rank_frac", "adv_abs_mean", "adv_shuffled_frac", "token_loss", "item_loss", "ratio_mean",
              "clip_frac", "kl_ref", "entropy", "reasoning_len", "forced_frac", "cut_frac", "grad_norm",
              "mean_rank", "seconds")


def pool_eval(tr, pool, sampled: int = 0) -> dict[str, list]:
    """Per-user fused reward, N@10 and rank of the pool's targets with greedy reasoning (the current weights;
    the item table refreshed first; the global random streams untouched). ``sampled`` = G > 0 adds
    ``reward_sampled``: each user's mean fused reward over G trajectories sampled at the training temperature and
    top-k with one fixed seed (the objective RL maximises, measured the same way before and after)."""
    from r2ec.recpo.rewards import rewards_from_scores
    from r2ec.recpo.step import reward_forward
    tr.before_evaluate()
    targets, hists = pool["target_item_id"].to_list(), pool["history_item_ids"].to_list()
    with torch.no_grad(), torch.random.fork_rng(devices=[]):
        scores = tr.scorer(pool)
    r, _, _, ranks = rewards_from_scores(scores, targets, hists, tr.beta, tr.rc.k_r)
    rk = ranks.float()
    n10 = torch.where(rk <= 10, 1.0 / torch.log2(rk + 1.0), torch.zeros_like(rk))
    out = {"reward": r.tolist(), "N@10": n10.tolist(), "rank": ranks.tolist()}
    if sampled:
        rc = tr.rc
        tr.policy.eval()
        with torch.random.fork_rng(devices=[]):
            ctx = tr.users.sync_engine()
            with ctx:
                groups = tr.users.generate(tr.users.prompts_of(pool), sampled, rc.temperature, rc.top_k, 7919)
            pairs = [(x.prompt_ids, x.completion_ids) for g in groups for x in g]
            _, _, _, (rs, _, _, _) = reward_forward(tr, pairs, targets, hists, sampled)
        out["reward_sampled"] = rs.view(-1, sampled).mean(dim=1).tolist()
    return out


BAR = {"p_rise": 0.01, "p_vs_control": 0.05, "minutes": 30.0}  # the learning check's bar (greedy reasoning)


def verdict(res: dict) -> dict:
    """Each condition of the bar (p_rise < 0.01, p_vs_control < 0.05, within 30 minutes) and whether all hold."""
    checks = {f"{k} < {v:g}" if k != "minutes" else f"minutes <= {v:g}":
              bool(res[k] <= v if k == "minutes" else res[k] < v) for k, v in BAR.items()}
    return {"checks": checks, "passed": all(checks.values())}


def _mean(d: dict[str, list]) -> dict[str, float]:
    m = {"reward": float(np.mean(d["reward"])), "N@10": float(np.mean(d["N@10"])),
         "median_rank": float(np.median(d["rank"]))}
    if "reward_sampled" in d:
        m["reward_sampled"] = float(np.mean(d["reward_sampled"]))
    return m


def run_arm(p, ds, cache: Path | None, run_dir: Path, steps: int, eval_every: int, sampled: int = 0,
            log=print) -> dict:
    """One arm: the trainer as ``train_r2ec`` builds it, its fresh start (warm start), ``steps`` steps of the
    harness's seeded batches over the pool, greedy pool evaluations."""
    from r2ec.recpo.trainer import _Trainer
    t0 = time.perf_counter()
    tr = _Trainer("r2ec", ds, p, run_dir, cache, progress=False, use_dvclive=False, hook=None)
    tr.on_fresh_start()
    pool = tr.train_pool()
    before = pool_eval(tr, pool, sampled)
    pool_curve = [{"step": 0, **_mean(before)}]
    curve = []
    ts = time.perf_counter()
    for _ in range(steps):
        rec, sec = tr.take_step(pool)  # as the harness's train_loop
        rec["seconds"] = sec
        tr.step += 1
        curve.append({"step": tr.step, **{k: float(rec[k]) for k in CURVE_KEYS if k in rec}})
        log(f"  step {tr.step}: reward {rec['reward']:.4f} flat {rec['flat_group_frac']:.2f} "
            f"kl_ref {rec['kl_ref']:.2e} entropy {rec['entropy']:.2f} len {rec['reasoning_len']:.1f}")
        if eval_every and tr.step % eval_every == 0 and tr.step < steps:
            pool_curve.append({"step": tr.step, **_mean(pool_eval(tr, pool, sampled))})
    train_s = time.perf_counter() - ts
    after = pool_eval(tr, pool, sampled)
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
    ap = base_parser(__doc__)
    ap.add_argument("--users", type=int, default=32, help="training users of the fixed pool (recpo.train_max_samples)")
    ap.add_argument("--steps", type=int, default=40, help="RecPO steps per arm")
    ap.add_argument("--eval-every", type=int, default=10, help="greedy pool evaluation every N steps (0 = "
                    "before and after only)")
    ap.add_argument("--work", type=Path, default=Path("/tmp/recpo_learning"), help="run directories")
    ap.add_argument("--warm", type=Path, help="an existing run directory of recpo.warm_start to start from")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--sampled", type=int, default=0, metavar="G", help="also measure each user's mean reward over G "
                    "trajectories sampled at the training temperature (0 = greedy only)")
    ap.add_argument("--jobs", type=int, default=1, choices=(1, 2), help="2 = the two arms in two processes at once "
                    "(give each --threads 1 on a 2-core machine)")
    ap.add_argument("--arm", choices=[n for n, _ in ARMS], help=argparse.SUPPRESS)  # one arm, for --jobs 2
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
    params = {name: C.load(a.params or ["params.yaml"], over + [f"recpo.shuffle_advantages={str(sh).lower()}"]) for name, sh in ARMS}
    p0 = params["recpo"]
    if p0.recpo.batch_size > a.users:
        ap.error(f"recpo.batch_size={p0.recpo.batch_size} exceeds --users {a.users}")
    cache = cache_of(a)
    a.work.mkdir(parents=True, exist_ok=True)
    if p0.recpo.warm_start:  # both arms start from the same warm-start run (a sibling of their run dirs)
        src = a.work / p0.recpo.warm_start
        if a.warm is not None and not src.exists():
            shutil.copytree(a.warm, src)
        if not (src / "best" / "trainable.pt").exists():
            train_r2ec(p0.recpo.warm_start, ds, p0, src, cache, progress=False, dvclive=False)
    if a.arm:  # a child of --jobs 2: one arm, its result as JSON under --work
        run = a.work / a.arm
        shutil.rmtree(run, ignore_errors=True)
        res = run_arm(params[a.arm], ds, cache, run, a.steps, a.eval_every, a.sampled,
                      log=lambda m: print(f"[{a.arm}] {m}", flush=True))
        (a.work / f"{a.arm}.json").write_text(json.dumps(res))
        return res
    arms = {}
    if a.jobs == 2:
        import subprocess
        argv_ = list(argv if argv is not None else sys.argv[1:])
        kids = {name: subprocess.Popen([sys.executable, __file__, *argv_, "--arm", name]) for name, _ in ARMS}
        for name, kid in kids.items():
            if kid.wait() != 0:
                raise SystemExit(f"arm {name} failed (exit {kid.returncode})")
            arms[name] = json.loads((a.work / f"{name}.json").read_text())
    for name, _ in ARMS:
        if name in arms:
            continue
        print(f"== {name}", flush=True)
        run = a.work / name
        shutil.rmtree(run, ignore_errors=True)
        arms[name] = run_arm(params[name], ds, cache, run, a.steps, a.eval_every, a.sampled)
    rp, ct = arms["recpo"], arms["control"]
    date = datetime.date.today().isoformat()
    m = machine() | {"torch_threads": torch.get_num_threads()}
    res = {
        "command": command(argv),
        "date": date,
        "machine": m,
        "params": C.to_dict(p0), "users": a.users, "steps": a.steps, "eval_every": a.eval_every,
        "same_start": rp["before"] == ct["before"],
        "p_rise": wilcoxon_greater(rp["after"]["reward"], rp["before"]["reward"]),
        "p_vs_control": wilcoxon_greater(rp["after"]["reward"], ct["after"]["reward"]),
        "p_rise_n10": wilcoxon_greater(rp["after"]["N@10"], rp["before"]["N@10"]),
        "p_vs_control_n10": wilcoxon_greater(rp["after"]["N@10"], ct["after"]["N@10"]),
        "p_rise_control": wilcoxon_greater(ct["after"]["reward"], ct["before"]["reward"]),
        **({"p_rise_sampled": wilcoxon_greater(rp["after"]["reward_sampled"], rp["before"]["reward_sampled"]),
            "p_vs_control_sampled": wilcoxon_greater(rp["after"]["reward_sampled"], ct["after"]["reward_sampled"]),
            "p_rise_control_sampled": wilcoxon_greater(ct["after"]["reward_sampled"], ct["before"]["reward_sampled"])}
           if a.sampled else {}),
        "summary": {name: {"before": _mean(arm["before"]), "after": _mean(arm["after"]),
                           "minutes": arm["minutes"]} for name, arm in arms.items()},
        "minutes": (time.perf_counter() - t0) / 60,
        "arms": arms,
    }
    res["bar"] = verdict(res)
    out = a.out or Path("benchmarks/results") / f"recpo_learning-{m['kind']}-{date}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1) + "\n")
    res["figure"] = str(figure(res, out.with_suffix(".png")))
    for name, s in res["summary"].items():
        print(f"{name:8s} reward {s['before']['reward']:.4f} -> {s['after']['reward']:.4f}  "
              f"N@10 {s['before']['N@10']:.4f} -> {s['after']['N@10']:.4f}  ({s['minutes']:.1f} min)")
    print(f"p_rise={res['p_rise']:.4g} p_vs_control={res['p_vs_control']:.4g} bar "
          f"{'passed' if res['bar']['passed'] else 'not met'} -> {out}")
    return res


if __name__ == "__main__":
    main()
