"""Speed benchmark of R2ec (a benchmark, not a test; it asserts nothing about quality).

Usage (from the repository root, inside the project venv)::

    python benchmarks/r2ec_speed.py -S llm.backbone=tiny-random --steps 2 --items 64 --eval-samples 16
    python benchmarks/r2ec_speed.py --params params.yaml --steps 3 --items 256 --eval-samples 32 --out bench.json

It builds the RecPO trainer exactly as ``train_r2ec`` does (method ``r2ec``, a temporary run directory,
dvclive off) for the configured backbone (``llm.backbone`` from ``--params`` plus ``-S key=value``
overrides) and measures:

1. one RecPO step through ``_Trainer.recpo_step`` on the trainer's own seeded batches: rollout, reward
   forward and update seconds as the trainer reports them (mean over the steps after the first, or the
   single step when ``--steps 1``); the item-table refresh is timed on ``--items`` items and extrapolated to
   all N items (the steps run against that partial table tiled to N rows, so they do no refresh themselves);
2. throughputs: rollout tokens/s (sampled, ``recpo.group_size`` per user, from the steps), item encoding
   items/s, full-ranking evaluation samples/s (the shared evaluator with the trainer's greedy-reasoning
   scorer on the first ``--eval-samples`` test evaluation samples) and the latency of one recommendation
   request (prompt -> greedy reasoning -> user vector -> scores over all items -> top-10) at batch 1 and 8,
   median of ``--repeats`` runs.

Numbers depend on the machine's load; compare runs taken on the same machine under the same load only.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import base_parser, cache_of  # noqa: E402

from r2ec import config as C
from r2ec.eval.evaluator import evaluate, evaluation_samples
from r2ec.io import load_dataset
from r2ec.train.harness import seed_all, step_seed
from r2ec.recpo.trainer import _Trainer


def make_trainer(p: C.Params, data: Path, cache: Path | None, run_dir: Path,
                 method: str = "r2ec") -> tuple[_Trainer, float]:
    """The trainer as ``train_r2ec`` builds it; returns it with its construction seconds."""
    ds = load_dataset(data)
    t0 = time.perf_counter()
    tr = _Trainer(method, ds, p, run_dir, cache, progress=False, use_dvclive=False, hook=None)
    return tr, time.perf_counter() - t0


def bench_refresh(tr: _Trainer, n_items: int) -> dict:
    """Encode the first ``n_items`` items as ``refresh_table`` does (the merged copy with llm.inference_copy; the
    adapted layers over the frozen prefix with llm.frozen_prefix, whose one-off build over ALL items is timed
    apart); install them, tiled, as the trainer's item table."""
    from r2ec.llm.encoder import encode_items
    n = min(n_items, tr.ds.n_items)
    t0 = time.perf_counter()
    pf = tr.prefix()
    build_s = time.perf_counter() - t0
    model, ctx = tr.infer()
    with torch.inference_mode(), ctx:
        t0 = time.perf_counter()
        if pf is not None:
            bs = tr.rc.item_batch_size
            part = torch.cat([torch.zeros(1, model.config.hidden_size)]
                             + [pf.vectors(model, list(range(s, min(s + bs, n)))).float() for s in range(0, n, bs)])
        else:
            part = encode_items(model, tr.tok, tr.ds.items.head(n), tr.ds.name, tr.p.llm,
                                batch_size=tr.rc.item_batch_size, progress=False, prompt_ids=tr.items.item_ids[:n])
        sec = time.perf_counter() - t0
    rows = part[1:].clone()  # a normal tensor (not an inference tensor) for the training steps
    reps = -(-tr.ds.n_items // n)
    tr.table = torch.cat([torch.zeros_like(rows[:1]), rows.repeat(reps, 1)[:tr.ds.n_items]])
    tr.table_step = tr.step
    return {"items_encoded": n, "encode_s": sec, "items_per_s": n / sec,
            "refresh_all_s": sec * tr.ds.n_items / n, "prefix_build_s": build_s}


def bench_contrastive(tr: _Trainer, steps: int) -> dict:
    """``steps`` steps of the contrastive objective (``r2ec_no_reasoning``, its own batch and negatives); mean
    seconds after the first (the first builds the frozen prefix when it is on)."""
    pool = tr.ds.split("train")
    secs = []
    for _ in range(steps + 1):
        tr.table_step = tr.step
        t0 = time.perf_counter()
        tr.contrastive_step(tr.batch_rows(pool))
        secs.append(time.perf_counter() - t0)
        tr.step += 1
    mean = statistics.fmean(secs[1:])
    return {"contrastive_step_s": mean, "users_per_s": tr.rc.batch_size / mean,
            "contrastive_batch": tr.rc.batch_size, "contrastive_negatives": tr.rc.uniform_negatives}


def bench_steps(tr: _Trainer, steps: int) -> dict:
    """``steps`` RecPO steps on the trainer's seeded batches (as ``train_loop``); mean timings after the first."""
    rc = tr.rc
    pool = tr.ds.split("train")
    if 0 < rc.train_max_samples < pool.height:
        rng = np.random.default_rng(rc.seed)
        pool = pool[np.sort(rng.choice(pool.height, size=rc.train_max_samples, replace=False)).tolist()]
    recs = []
    for _ in range(steps):
        tr.table_step = tr.step  # keep the installed table current: the step must not re-encode all items
        t0 = time.perf_counter()
        seed_all(step_seed(rc.seed, tr.step, 2))
        rec = tr.recpo_step(tr.batch_rows(pool))
        rec["seconds"] = time.perf_counter() - t0
        recs.append(rec)
        tr.step += 1
    used = recs[1:] if len(recs) > 1 else recs
    keys = ("rollout_s", "reward_fwd_s", "update_s", "seconds", "tokens_per_s", "reasoning_len")
    return {k: statistics.fmean(r[k] for r in used) for k in keys} | {"steps_averaged": len(used)}


def bench_shared_prefill(tr: _Trainer, repeats: int) -> dict:
    """RecPO rollouts of one seeded batch (G samples per user) with the group's prompt prefilled once and
    shared, against G separate prefills (the path before :func:`r2ec.llm.rollout.shared_prefill`); medians."""
    import r2ec.llm.rollout as R
    prompts = tr.prompts_of(tr.batch_rows(tr.ds.split("train")))
    rc, real, out = tr.rc, R.shared_prefill, {}
    for name, fn in (("shared", real), ("separate", lambda *a: None)):
        R.shared_prefill, times = fn, []
        try:
            for _ in range(repeats):
                ctx = tr.users.sync_engine()
                t0 = time.perf_counter()
                with ctx:
                    tr.users.generate(prompts, rc.group_size, rc.temperature, rc.top_k, 1, old_logprobs=False)
                times.append(time.perf_counter() - t0)
        finally:
            R.shared_prefill = real
        out[f"rollout_{name}_s"] = statistics.median(times)
    return out


def bench_user_states(nr: _Trainer, n: int) -> dict:
    """``user_vectors`` (the forward-only states the readout is fitted on) of the first ``n`` fitting users."""
    from r2ec.llm.encoder import shared_prefix_len
    from r2ec.model.readout_fit import fitting_rows
    prompts = fitting_rows(nr)[1][:n]
    t0 = time.perf_counter()
    nr.user_vectors(prompts, None)
    sec = time.perf_counter() - t0
    return {"users": len(prompts), "seconds": sec, "users_per_s": len(prompts) / sec,
            "prompt_tokens": float(np.mean([len(x) for x in prompts])),
            "shared_prefix_tokens": shared_prefix_len(prompts) if nr.p.llm.shared_prefix else 0}


def bench_eval(tr: _Trainer, n_samples: int, two_pass: bool = False) -> dict:
    """The shared evaluator with the trainer's greedy-reasoning scorer on the first ``n_samples`` test samples.

    ``two_pass``: the user vector by a second forward over prompt + reasoning (the path of an engine without
    ``answer_hidden``, and of every version before the <answer> state was read off the generation cache)."""
    samples = evaluation_samples(tr.ds, "test", tr.p.eval).head(n_samples)
    kw = set(tr.users.gen_kw)
    if two_pass:
        tr.users.gen_kw.discard("answer_hidden")
    try:
        with torch.inference_mode(), torch.random.fork_rng(devices=[]):
            t0 = time.perf_counter()
            evaluate(tr.scorer, tr.ds, "test", tr.p.eval, samples=samples, progress=False)
            sec = time.perf_counter() - t0
    finally:
        tr.users.gen_kw = kw
    return {"eval_samples": samples.height, "eval_s": sec, "samples_per_s": samples.height / sec}


def recommend_batch(tr: _Trainer, rows, k: int = 10) -> torch.Tensor:
    """Prompt -> greedy reasoning -> user vector -> scores over all items (history masked) -> top-k ids."""
    scores = tr.scorer(rows)
    for i, hist in enumerate(rows["history_item_ids"].to_list()):
        if hist:
            scores[i, torch.as_tensor(hist)] = float("-inf")
    return torch.topk(scores, k, dim=1).indices


def bench_latency(tr: _Trainer, batch: int, repeats: int) -> dict:
    """Median wall seconds of one recommendation call for ``batch`` test users (after one warm-up call)."""
    rows = tr.ds.split("test").head(batch)
    times = []
    with torch.inference_mode():
        recommend_batch(tr, rows)
        for _ in range(repeats):
            t0 = time.perf_counter()
            recommend_batch(tr, rows)
            times.append(time.perf_counter() - t0)
    med = statistics.median(times)
    return {"batch": rows.height, "latency_s": med, "requests_per_s": rows.height / med}


def header(tr: _Trainer) -> dict:
    p = tr.p
    return {"backbone": p.llm.backbone, "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
            "device": str(tr.acc.device), "max_reasoning_tokens": p.recpo.max_reasoning_tokens,
            "group_size": p.recpo.group_size, "batch_size": p.recpo.batch_size,
            "max_prompt_tokens": p.llm.max_prompt_tokens, "autocast": p.llm.autocast,
            "lora_last_layers": p.lora.last_layers, "uniform_negatives": p.recpo.uniform_negatives,
            "inference_copy": p.llm.inference_copy, "frozen_prefix": p.llm.frozen_prefix,
            "shared_prefix": p.llm.shared_prefix, "gen_batch_size": p.recpo.gen_batch_size,
            "n_items": tr.ds.n_items}


def table(res: dict) -> str:
    h, s, r, e = res["header"], res["step"], res["refresh"], res["eval"]
    lines = [" ".join(f"{k}={v}" for k, v in h.items()),
             f"trainer construction (backbone load, LoRA, item prompts): {res['setup_s']:.2f} s"]
    rows = [
        ("recpo step", f"rollout (mean of {s['steps_averaged']} step(s))", s["rollout_s"], "s"),
        ("recpo step", "reward forward", s["reward_fwd_s"], "s"),
        ("recpo step", "backward/update", s["update_s"], "s"),
        ("recpo step", f"item refresh, all {h['n_items']} items (from {r['items_encoded']})",
         r["refresh_all_s"], "s"),
        ("recpo step", "step total without refresh", s["seconds"], "s"),
        ("throughput", f"rollout (G={h['group_size']}, mean len {s['reasoning_len']:.1f})", s["tokens_per_s"],
         "tokens/s"),
        ("throughput", "item encoding", r["items_per_s"], "items/s"),
        ("throughput", f"full-ranking evaluation ({e['eval_samples']} samples)", e["samples_per_s"], "samples/s"),
    ]
    if "eval_two_pass" in res:
        rows.append(("throughput", "evaluation, user vector by a second forward (old path)",
                     res["eval_two_pass"]["samples_per_s"], "samples/s"))
    if "shared_prefill" in res:
        for k in ("shared", "separate"):
            rows.append(("recpo step", f"rollout of one batch, {k} prefill per user (median)",
                         res["shared_prefill"][f"rollout_{k}_s"], "s"))
    if r.get("prefix_build_s"):
        rows.append(("recpo step", "frozen-prefix build, all items (once per run)", r["prefix_build_s"], "s"))
    if "contrastive" in res:
        c = res["contrastive"]
        rows.append(("contrastive", f"step ({c['contrastive_batch']} users + {c['contrastive_negatives']} "
                     f"negatives)", c["contrastive_step_s"], "s"))
        rows.append(("contrastive", "users", c["users_per_s"], "users/s"))
    if "user_states" in res:
        u = res["user_states"]
        rows.append(("throughput", f"user states, no reasoning ({u['users']} users, {u['prompt_tokens']:.0f} "
                     f"tokens, {u['shared_prefix_tokens']} shared)", u["users_per_s"], "users/s"))
    for lat in res["latency"]:
        rows.append(("latency", f"recommend top-10, batch {lat['batch']} (median)", lat["latency_s"], "s"))
        rows.append(("latency", f"recommend top-10, batch {lat['batch']}", lat["requests_per_s"], "requests/s"))
    w0, w1 = max(len(x[0]) for x in rows), max(len(x[1]) for x in rows)
    lines.append(f"{'section':<{w0}}  {'measure':<{w1}}  {'value':>12}  unit")
    lines += [f"{a:<{w0}}  {b:<{w1}}  {v:>12.4g}  {u}" for a, b, v, u in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    ap = base_parser(__doc__)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--items", type=int, default=256)
    ap.add_argument("--eval-samples", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3, help="repeats of each latency measurement (median)")
    ap.add_argument("--contrastive-steps", type=int, default=2, help="timed r2ec_no_reasoning steps (0 = skip)")
    ap.add_argument("--user-states", type=int, default=0,
                    help="also time the no-reasoning user states of this many of the readout's fitting users")
    ap.add_argument("--out", type=Path, help="also write the results as JSON here")
    ap.add_argument("--shared-prefill", action="store_true",
                    help="also time one batch of rollouts with and without the shared per-user prefill")
    ap.add_argument("--eval-two-pass", action="store_true",
                    help="also time the evaluation with a second forward for the user vector (the old path)")
    ap.add_argument("--before", action="append", default=[], metavar="KEY=VALUE",
                    help="first measure a 'before' configuration (these overrides on top of -S), then the given one")
    a = ap.parse_args(argv)
    if a.steps < 1 or a.items < 1 or a.eval_samples < 1 or a.repeats < 1:
        ap.error("--steps, --items, --eval-samples and --repeats must be >= 1")

    configs = ([("before", a.overrides + a.before)] if a.before else []) + [("after" if a.before else "run",
                                                                             a.overrides)]
    out = {}
    for name, over in configs:
        p = C.load(a.params or ["params.yaml"], over)
        seed_all(p.recpo.seed)
        with tempfile.TemporaryDirectory(prefix="r2ec_speed_") as tmp:
            tr, setup_s = make_trainer(p, Path(a.data), cache_of(a), Path(tmp) / "run")
            res = {"header": header(tr), "setup_s": setup_s, "refresh": bench_refresh(tr, a.items)}
            res["step"] = bench_steps(tr, a.steps)
            res["eval"] = bench_eval(tr, a.eval_samples)
            if a.eval_two_pass:
                res["eval_two_pass"] = bench_eval(tr, a.eval_samples, two_pass=True)
            if a.shared_prefill:
                res["shared_prefill"] = bench_shared_prefill(tr, a.repeats)
            res["latency"] = [bench_latency(tr, b, a.repeats) for b in (1, 8)]
            del tr
            if a.contrastive_steps or a.user_states:
                nr, _ = make_trainer(p, Path(a.data), cache_of(a), Path(tmp) / "nr", "r2ec_no_reasoning")
                if a.contrastive_steps:
                    res["contrastive"] = bench_contrastive(nr, a.contrastive_steps)
                if a.user_states:
                    res["user_states"] = bench_user_states(nr, a.user_states)
                del nr
        print(f"== {name}: {' '.join(over) or '(params as given)'}")
        print(table(res))
        out[name] = res
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps(out, indent=2) + "\n")
    return out


if __name__ == "__main__":
    main()
