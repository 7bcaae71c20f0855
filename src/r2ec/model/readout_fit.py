"""Fitting a run's readout (:mod:`r2ec.model.readout`) on base-model user states, and distilling its users-only
map for a warm-started reasoning variant; the fitting users' states are cached like the item table.

``tr`` is the R2ec trainer (:class:`r2ec.recpo.trainer.R2ecTrainer`): its readout, item table, user encoder,
prior and run directory.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch

from r2ec.errors import UserError

log = logging.getLogger(__name__)


def seeded_train_rows(tr: Any, n: int, salt: int) -> pl.DataFrame:
    train = tr.ds.split("train")
    rng = np.random.default_rng([tr.ro.seed, salt])
    return train[np.sort(rng.choice(train.height, size=min(n, train.height), replace=False)).tolist()]


def fitting_rows(tr: Any, reasoning_tokens: int = 0) -> tuple[pl.DataFrame, list[list[int]], Path | None]:
    """The readout's fitting users (``readout.train_users`` seeded train samples), their prompts and the cache file
    of their base-model states (keyed by backbone, prompts and reasoning length, 0 = none; None without a cache
    dir)."""
    rows = seeded_train_rows(tr, tr.ro.train_users, 13)
    prompts = tr.users.prompts_of(rows)
    return rows, prompts, tr.items.cache_path("user_states", prompts, reasoning_tokens)


def load_readout(readout: Any, d: Path) -> None:
    """Load ``d/readout.pt`` (projection + user stats) into ``readout``, when there is one."""
    if readout is None:
        return
    f = d / "readout.pt"
    if not f.exists():
        raise UserError(f"{f}: not found; that run was trained without the readout (readout.rank = 0)")
    sd = torch.load(f, map_location="cpu", weights_only=True)
    if tuple(sd["proj"].shape) != tuple(readout.proj.shape):
        raise UserError(f"{f}: projection of shape {tuple(sd['proj'].shape)}, this run's is "
                         f"{tuple(readout.proj.shape)} (different readout.rank?)")
    # a warm start from r2ec_no_reasoning has no users-only map: :func:`readout_distill` fits it next
    missing, unexpected = readout.load_state_dict(sd, strict=False)
    if unexpected or set(missing) - {"user_proj"}:
        raise UserError(f"{f}: unexpected readout tensors {unexpected}, missing {missing}")


def fit_readout(tr: Any) -> dict[str, Any]:
    """Fit the readout on the base model's user states of ``readout.train_users`` seeded train samples
    (:func:`r2ec.model.readout.fit_readout`; the states are cached like the item table: they depend only on the
    backbone and the prompts). Called on a fresh start, before any step, so the adapter is the identity: by
    ``r2ec_no_reasoning``, and by a reasoning variant without ``recpo.warm_start`` (on its greedy-reasoning
    states, which cost a generation each)."""
    from r2ec.model.readout import fit_readout as fit
    tr.refresh_table()
    t0 = time.perf_counter()
    # a reasoning variant without warm start fits on its own (greedy-reasoning) states
    rows, prompts, cache = fitting_rows(tr, tr.rc.max_reasoning_tokens if tr.var.reasoning else 0)
    if cache is not None and cache.exists():
        states = torch.load(cache, map_location="cpu", weights_only=True)
    else:
        states = tr.users.states(rows, desc=f"{tr.method} readout users", prompts=prompts)
        if cache is not None and tr.acc.is_main_process:
            from r2ec.io import atomic_path
            with atomic_path(cache) as tmp:  # creates the cache's folder
                torch.save(states, tmp)
    state_s = time.perf_counter() - t0
    info = fit(tr.readout, states, torch.as_tensor(rows["target_item_id"].to_list()),
               rows["history_item_ids"].to_list(), tr.table, tr.log_prior(), epochs=tr.ro.epochs,
               lr=tr.ro.lr, weight_decay=tr.ro.weight_decay)
    info = {"users": int(states.shape[0]), "states_s": round(state_s, 1), **info}
    log.info("%s: readout fitted on %d train users (states %.0fs, fit %.1fs, loss %.3f -> %.3f)", tr.method,
             info["users"], state_s, info["seconds"], info["loss_first"], info["loss_last"])
    if tr.acc.is_main_process:
        from r2ec.io import write_text
        write_text(tr.run_dir / "readout_fit.json", json.dumps(info, indent=2) + "\n")
    return info


def adapter_digest(model: torch.nn.Module) -> str:
    """sha256 of the model's LoRA tensors (names and values): what, besides the backbone and the prompts, decides
    the user states a warm-started adapter computes."""
    h = hashlib.sha256()
    for n, q in sorted(model.named_parameters(), key=lambda t: t[0]):
        if "lora_" in n:
            h.update(n.encode())
            h.update(q.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def distill_rows(tr: Any) -> tuple[pl.DataFrame, list[list[int]], np.ndarray, Path | None]:
    """The distillation's users: ``readout.distill_users`` seeded rows of the fitting users, their prompts, their
    indices among the fitting users and the cache file of the fitting users' base-model states. Kept on the trainer
    (``tr.distill_set``): they depend only on the data and params, and every re-distillation reads them again."""
    if tr.distill_set is None:
        fit_rows, fit_prompts, cache = fitting_rows(tr)
        rng = np.random.default_rng([tr.ro.seed, 17])
        pick = np.sort(rng.choice(fit_rows.height, size=min(tr.ro.distill_users, fit_rows.height), replace=False))
        tr.distill_set = (fit_rows[pick.tolist()], [fit_prompts[i] for i in pick.tolist()], pick, cache)
    return tr.distill_set


def readout_redistill(tr: Any) -> dict[str, Any] | None:
    """``readout.redistill``: before a validation after step 0, re-fit the users-only map on the distillation users'
    states after the CURRENT adapter's greedy reasoning, onto the projections the warm start's distillation
    regressed onto (:func:`readout_distill`). RecPO changes the reasoning; a map fitted on step 0's reasoning reads
    the new states badly, so without this a step is judged by a map that no longer fits it. One line per call in
    ``readout_redistill.jsonl``."""
    if tr.readout is None or tr.readout.user_proj is None or tr.distill_target is None:
        return None
    from r2ec.model.readout import fit_user_map
    t0 = time.perf_counter()
    rows, prompts = distill_rows(tr)[:2]
    student = tr.users.states(rows, desc=f"{tr.method} re-distill at step {tr.step}", prompts=prompts)
    info = {"step": tr.step, **fit_user_map(tr.readout, tr.distill_target, student, tr.ro.distill_ridge),
            "seconds": round(time.perf_counter() - t0, 1)}
    log.info("%s: users-only map re-fitted at step %d on %d users (R^2 %.3f) in %.0fs", tr.method, tr.step,
             info["users"], info["r2"], info["seconds"])
    if tr.acc.is_main_process:
        from r2ec.io import append_jsonl
        append_jsonl(tr.run_dir / "readout_redistill.jsonl", info)
    return info


def readout_distill(tr: Any) -> dict[str, Any] | None:
    """``readout.distill_users``: fit the users-only projection of a warm-started reasoning variant
    (:func:`r2ec.model.readout.distill_user_map`) on seeded users of the readout's fitting set: teacher = their
    state right after the prompt (the cached fitting states when the adapter is still the base model's),
    student = their state at ``<answer>`` after greedy reasoning, as evaluation computes it. The student states
    are cached (keyed by the backbone, the prompts, the reasoning length and the warm-start adapter's digest), so a
    rerun that changes only what follows the warm start (``dvc exp run -S recpo.beta=...``) skips their generation."""
    if tr.readout is None or tr.readout.user_proj is None:
        return None
    from r2ec.model.readout import fit_user_map, teacher_projection
    t0 = time.perf_counter()
    rows, prompts, pick, cache = distill_rows(tr)
    identity = all(float(q.detach().abs().max()) == 0.0 for n, q in tr.policy.named_parameters()
                   if "lora_B" in n)
    cache = cache if identity else None  # a trained adapter's no-reasoning states are not the cached ones
    if cache is not None and cache.exists():
        teacher = torch.load(cache, map_location="cpu", weights_only=True)[torch.as_tensor(pick)]
    else:
        teacher = tr.users.vectors(prompts, None, desc=f"{tr.method} distill teacher")
    student_cache = tr.items.cache_path("distill_states", prompts, tr.rc.max_reasoning_tokens,
                                        tr.rc.engine, adapter_digest(tr.policy))
    student_cached = student_cache is not None and student_cache.exists()
    if student_cached:
        student = torch.load(student_cache, map_location="cpu", weights_only=True)
    else:
        student = tr.users.states(rows, desc=f"{tr.method} distill reasoning", prompts=prompts)
        if student_cache is not None and tr.acc.is_main_process:
            from r2ec.io import atomic_path
            with atomic_path(student_cache) as tmp:
                torch.save(student.cpu(), tmp)
    tr.distill_target = teacher_projection(tr.readout, teacher).cpu()  # what a re-distillation regresses onto
    info = {**fit_user_map(tr.readout, tr.distill_target, student, tr.ro.distill_ridge),
            "teacher_cached": bool(cache is not None and cache.exists()), "student_cached": student_cached,
            "seconds": round(time.perf_counter() - t0, 1)}
    log.info("%s: users-only readout map distilled on %d users (R^2 %.3f) in %.0fs", tr.method, info["users"],
             info["r2"], info["seconds"])
    if tr.acc.is_main_process:
        from r2ec.io import write_text
        write_text(tr.run_dir / "readout_distill.json", json.dumps(info, indent=2) + "\n")
    return info
