"""The contrastive step of ``r2ec_no_reasoning`` (in-batch InfoNCE, no generation) and the item-loss candidates
both steps share: the uniform catalogue negatives (Mixed Negative Sampling).

``tr`` is the R2ec trainer (:class:`r2ec.recpo.trainer.R2ecTrainer`).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import polars as pl

from r2ec.train.losses import in_batch_labels


def negative_ids(tr: Any, exclude: list[int]) -> list[int]:
    """``recpo.uniform_negatives`` catalogue items outside ``exclude`` (the batch's targets), drawn uniformly
    and seeded per step. They join the in-batch targets as candidates of the item loss and are encoded like
    them, WITH gradient (Mixed Negative Sampling): stop-gradient negatives of a shared encoder let the
    loss fall to ln K by collapsing every vector onto one direction (seen on SmolLM2 and the tiny model)."""
    k = tr.rc.uniform_negatives
    if k <= 0:
        return []
    rng = np.random.default_rng([tr.rc.seed, tr.step, 3, 0])  # the same draws on every rank
    pool = np.setdiff1d(np.arange(1, tr.ds.n_items + 1), np.asarray(exclude, dtype=np.int64))
    return np.sort(rng.choice(pool, size=min(k, pool.size), replace=False)).tolist()


def contrastive_step(tr: Any, rows: pl.DataFrame) -> dict[str, Any]:
    """``r2ec_no_reasoning``: in-batch InfoNCE between <answer>-right-after-prompt user vectors and targets."""
    rec: dict[str, Any] = {"refresh_s": 0.0, "rollout_s": 0.0, "reward_fwd_s": 0.0}
    if tr.readout is not None and tr.items.stale(tr.step, tr.rc.item_refresh_every):
        rec["refresh_s"] = tr.refresh_table()  # the readout's item statistics use the current table
    # N processes: the candidates are the global batch's targets on every rank, the rows this rank's shard, and
    # the loss this rank's share of the global mean (the ranks' gradients are summed)
    multi = getattr(tr, "world", 1) > 1
    targets_all = (tr.global_rows if multi else rows)["target_item_id"].to_list()
    uniq, labels = in_batch_labels(targets_all)
    if multi:
        labels = labels[tr.shard[0]:tr.shard[1]]
    t = time.perf_counter()
    cand = uniq + negative_ids(tr, uniq)
    tr.policy.train()
    tr.opt.zero_grad(set_to_none=True)
    with tr.autocast():
        user = tr.users.train_vectors(rows)
        logp = tr.item_logprob(user, tr.items.vectors(cand), labels.to(tr.acc.device), cand)
        loss = -logp.mean() if not multi else -logp.sum() / len(targets_all)
    tr.backward(loss)
    gnorm = tr.optimizer_step()
    tr.policy.eval()
    rec["update_s"] = time.perf_counter() - t
    # rewards, advantages and rollout throughput do not apply here: absent from the record, not NaN
    rec.update({"token_loss": 0.0, "item_loss": (-logp.mean()).item(), "kl": 0.0, "grad_norm": gnorm,
                "reasoning_len": 0.0})
    return rec
