"""GPU check: the first RecPO steps of a configuration (the paper profile by default) on this machine's GPU.

A benchmark, not a test: it trains the ``r2ec`` method as the pipeline does (the same trainer, its seeded
batches, its item table) for ``--steps`` steps without validation, and writes one JSON of evidence::

    python benchmarks/gpu_check.py --params params.yaml --params configs/profiles/paper.yaml \\
        --data results/data/Video_Games --steps 20
    accelerate launch --config_file configs/accelerate/zero2.yaml --num_processes 4 benchmarks/gpu_check.py \\
        --params params.yaml --params configs/profiles/paper.yaml --data results/data/Video_Games

JSON (``--out``, default ``benchmarks/results/gpu-<gpu>-<date>.json``): command, date, machine, processes and
engine, params; the item table's full encoding seconds; per step seconds, rollout / reward-forward / update
seconds, rollout tokens/s, fused reward, token and item loss, grad norm; steps/s and rollout tokens/s over the
steps after the first; peak accelerator memory (GiB; the process's peak RSS on CPU); the reward's and the token
loss's least-squares slope over the steps with its p-value (scipy.stats.linregress; a trend, not a verdict over a
few steps). Without CUDA it refuses unless ``--cpu`` (a dry run on the tiny model; the test suite does that).
"""

from __future__ import annotations

import datetime
import math
import re
import resource
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import base_parser, cache_of, command, load_params, machine  # noqa: E402

STEP_KEYS = ("rollout_s", "reward_fwd_s", "update_s", "tokens_per_s", "reward", "reward_std", "token_loss", "item_loss",
             "grad_norm", "reasoning_len")


def trend(ys: list[float]) -> dict:
    """Least-squares slope of ``ys`` over the step index and its two-sided p-value (None below 3 points)."""
    from scipy.stats import linregress
    pts = [(i, y) for i, y in enumerate(ys) if y is not None and math.isfinite(y)]
    if len(pts) < 3:
        return {"slope": None, "p": None}
    r = linregress([x for x, _ in pts], [y for _, y in pts])
    return {"slope": float(r.slope), "p": float(r.pvalue)}


def peak_memory_gib() -> float:
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def run_steps(tr, steps: int) -> list[dict]:
    """``steps`` training steps as the harness's loop takes them (seeded batches, the global batch's mean record
    under N processes), without validation or checkpoints."""
    from r2ec import dist
    from r2ec.train.harness import mean_record
    pool = tr.train_pool()
    out = []
    for _ in range(steps):
        rec, sec = tr.take_step(pool)
        if tr.world > 1:
            rec = mean_record(dist.gather_objects(tr.acc, rec))
        out.append({"step": tr.step, "seconds": sec, **{k: rec.get(k) for k in STEP_KEYS}})
        tr.step += 1
    return out


def summary(steps: list[dict]) -> dict:
    timed = steps[1:] or steps  # the first step carries one-off costs (allocations, compilation)
    sec = sum(s["seconds"] for s in timed)
    return {"steps_per_s": len(timed) / sec, "step_s": sec / len(timed),
            "rollout_tokens_per_s": sum(s["tokens_per_s"] or 0.0 for s in timed) / len(timed),
            "reward_trend": trend([s["reward"] for s in steps]),
            "token_loss_trend": trend([s["token_loss"] for s in steps])}


def main(argv: list[str] | None = None) -> dict:
    ap = base_parser(__doc__)
    ap.add_argument("--steps", type=int, default=10, help="RecPO steps to take")
    ap.add_argument("--cpu", action="store_true", help="run without CUDA (a dry run of the script)")
    ap.add_argument("--out", type=Path, help="JSON (default benchmarks/results/gpu-<gpu>-<date>.json)")
    a = ap.parse_args(argv)
    if a.steps < 1:
        ap.error("--steps must be >= 1")
    if not torch.cuda.is_available() and not a.cpu:
        raise SystemExit("gpu_check: no CUDA device here; run it on a GPU machine (or pass --cpu for a dry run)")
    from r2ec import config as C
    from r2ec.io import load_dataset, write_json
    from r2ec.recpo.trainer import _Trainer
    from r2ec.train.engine import engine_name

    p = load_params(a)
    ds = load_dataset(a.data)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        tr = _Trainer("r2ec", ds, p, Path(tmp) / "r2ec", cache_of(a), progress=False,
                      use_dvclive=False, hook=None)
        setup_s = time.perf_counter() - t0
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        tr.refresh_table()
        table_s = time.perf_counter() - t0
        steps = run_steps(tr, a.steps)
        mem = peak_memory_gib()
        world, engine = tr.world, engine_name(tr.acc)
        main_process = tr.acc.is_main_process
    m = machine()
    res = {"command": command(argv), "date": datetime.date.today().isoformat(), "machine": m,
           "processes": world, "engine": engine, "params": C.to_dict(p), "setup_s": setup_s,
           "item_table": {"items": ds.n_items, "seconds": table_s, "items_per_s": ds.n_items / table_s},
           "peak_memory_gib": mem, "steps": steps, "summary": summary(steps)}
    if main_process:
        name = re.sub(r"[^a-z0-9]+", "-", (m.get("gpu") or m["kind"]).lower()).strip("-")
        out = a.out or Path("benchmarks/results") / f"gpu-{name}-{res['date']}.json"
        write_json(out, res)
        s = res["summary"]
        print(f"{engine} x{world} on {m.get('gpu') or m['kind']}: {s['step_s']:.2f} s/step, "
              f"{s['rollout_tokens_per_s']:.0f} rollout tokens/s, item table {table_s:.1f} s, peak {mem:.2f} GiB, "
              f"reward slope {s['reward_trend']['slope']} -> {out}")
    return res


if __name__ == "__main__":
    from r2ec.errors import UserError
    try:
        main()
    except UserError as e:  # bad params, data or install: one line, as the CLI reports it
        raise SystemExit(f"error: {e}") from None
