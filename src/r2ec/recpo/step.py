"""One RecPO step (methods ``r2ec``, ``r2ec_no_rd``, ``r2ec_no_rc``, ``r2ec_cls_head``; see
:mod:`r2ec.recpo.trainer` for the whole recipe): item-table refresh, rollouts, the reward forward (REAL old
log-probs and user vectors from one pass), rewards, advantages, best-trajectory gating, then ``recpo.mu`` update
passes of ``token_loss + item_loss_coef * item_loss (+ kl_coef * kl)``, each accumulated over micro-batches.

``tr`` is the R2ec trainer (:class:`r2ec.recpo.trainer.R2ecTrainer`).
"""

from __future__ import annotations

import logging
import time
from typing import Any

import polars as pl
import torch
from accelerate.utils import DistributedType

from r2ec.errors import UserError
from r2ec.recpo.advantages import advantages as compute_advantages
from r2ec.recpo.contrastive import negative_ids
from r2ec.recpo.diagnostics import flat_group_frac, k3_kl, masked_mean, mean_std, shuffled_advantages
from r2ec.recpo.losses import best_trajectory_mask, clipped_item_loss, clipped_token_loss, kl_penalty
from r2ec.recpo.rewards import rewards_from_scores
from r2ec.train.harness import step_seed
from r2ec.train.losses import in_batch_labels

log = logging.getLogger(__name__)


def pad_logps(logps: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-align a list of per-sequence log-prob vectors into ``[B, Tc]`` plus the valid mask."""
    tc = max(int(x.numel()) for x in logps)
    dev = logps[0].device
    mask = torch.zeros((len(logps), tc), dtype=torch.float32, device=dev)
    rows = []
    for i, lp in enumerate(logps):
        n = int(lp.numel())
        pad = torch.zeros(tc - n, dtype=lp.dtype, device=dev)
        rows.append(torch.cat([pad, lp.float()]))
        mask[i, tc - n:] = 1.0
    out = torch.stack(rows)
    return out, mask


def trajectory_states(tr: Any, pairs: list, G: int):
    """The step's :class:`r2ec.llm.frozen_states.FrozenStates` (``llm.frozen_states``), or None: off, every layer
    adapted, DeepSpeed (the passes must go through its engine), or a first-step check against full forwards that
    failed (warned once; the run then forwards whole)."""
    from r2ec.llm.frozen_prefix import first_adapted_layer
    from r2ec.llm.frozen_states import build_states
    if not pairs:
        return None
    split = tr._frozen_split
    if split is None:  # decided once per trainer
        split = first_adapted_layer(tr.policy) if tr.p.llm.frozen_states else 0
        if tr.acc.distributed_type == DistributedType.DEEPSPEED or (split and not _agrees(tr, split, pairs[:2 * G], G)):
            split = 0
        tr._frozen_split = split
    if not split:
        return None
    with torch.no_grad(), tr.autocast():
        return build_states(tr.policy, split, pairs, G, tr.pad_id, tr.rc.eval_batch_size)


def _agrees(tr: Any, split: int, pairs: list, G: int) -> bool:
    """First use: the adapted layers on the frozen states must give a full forward's log-probs and states. Checked
    without autocast (bf16 matmuls over other shapes round differently; the check is about the computation),
    to float32 rounding unless the weights themselves are in a 16-bit dtype."""
    from r2ec.llm.frozen_states import build_states
    from r2ec.llm.rollout import completion_logprobs
    kw = dict(pad_id=tr.pad_id, return_hidden=True, answer_id=tr.answer_id)
    with torch.no_grad():
        fr = build_states(tr.policy, split, pairs, G, tr.pad_id, tr.rc.eval_batch_size)
        full, hf = completion_logprobs(tr.policy, pairs, **kw)
        fast, hs = completion_logprobs(tr.policy, pairs, frozen=fr, **kw)
    err = max(float((a - b).abs().max()) for a, b in zip(full, fast))
    err_h = float((hf - hs).abs().max() / hf.abs().max().clamp_min(1e-6))
    tol = 1e-2 if next(tr.policy.parameters()).dtype == torch.float32 else 0.25
    if err > tol or err_h > 2e-2:
        log.warning("llm.frozen_states: disagrees with a full forward (log-prob error %.3g, state %.3g); not used",
                    err, err_h)
        return False
    return True


def reward_forward(tr: Any, pairs: list, targets: list[int], hists: list[list[int]], G: int,
                   entropy: list | None = None, frozen: Any = None) -> tuple[list, torch.Tensor, torch.Tensor, tuple]:
    """One no-grad pass of the policy over G trajectories per user (``pairs`` = (prompt ids, completion ids),
    user-major): their per-token log-probs at ``recpo.temperature``, the user vectors at the final ``<answer>``,
    the targets repeated per trajectory and the fused rewards ``(r, r_d, r_c, ranks)`` of
    :func:`r2ec.recpo.rewards.rewards_from_scores` (``entropy`` collects per-token entropies when given;
    ``frozen``: the pairs' :func:`trajectory_states`)."""
    from r2ec.llm.rollout import completion_logprobs
    rc = tr.rc
    with torch.no_grad(), tr.autocast():
        logp, user = completion_logprobs(tr.policy, pairs, rc.temperature, pad_id=tr.pad_id,
                                         batch_size=rc.eval_batch_size, return_hidden=True,
                                         answer_id=tr.answer_id, entropy=entropy, frozen=frozen)
        user = user.float()
        tgt_rep = torch.as_tensor(targets).repeat_interleave(G)
        rewards = rewards_from_scores(tr.rec.scores(user), tgt_rep, [h for h in hists for _ in range(G)], tr.beta,
                                      rc.k_r)
    return logp, user, tgt_rep, rewards


def recpo_step(tr: Any, rows: pl.DataFrame) -> dict[str, Any]:
    from r2ec.llm.rollout import completion_logprobs

    rc, G = tr.rc, tr.rc.group_size
    rec: dict[str, Any] = {}
    t = time.perf_counter()
    rec["refresh_s"] = tr.refresh_table() if tr.items.stale(tr.step, rc.item_refresh_every) else 0.0
    # N processes: every rank rolls out the step's whole global batch (the same seeded draws one process makes)
    # and keeps the groups of its shard ``[lo, hi)`` for the reward forward and the update passes
    multi = getattr(tr, "world", 1) > 1
    every = tr.global_rows if multi else rows
    lo, hi = tr.shard if multi else (0, rows.height)
    prompts = tr.users.prompts_of(every)
    targets_all = every["target_item_id"].to_list()
    targets = targets_all[lo:hi]
    hists = rows["history_item_ids"].to_list()

    # rollouts (eval mode, seeded); vLLM gets the current adapter (never merged)
    t = time.perf_counter()
    ctx = tr.users.sync_engine()
    tr.policy.eval()
    with ctx:
        groups = tr.users.generate(prompts, G, rc.temperature, rc.top_k, step_seed(rc.seed, tr.step, 1),
                                   old_logprobs=False)
    if multi:
        groups = groups[lo:hi]
    rec["rollout_s"] = time.perf_counter() - t
    stats = getattr(tr.engine, "last_stats", {}) or {}
    trajs = [x for g in groups for x in g]
    pairs = [(x.prompt_ids, x.completion_ids) for x in trajs]

    # reward forward (no grad, eval mode, the rollout policy's parameters): the REAL old log-probs and the
    # user vectors at the final <answer> from one pass; then rewards, advantages, gating
    t = time.perf_counter()
    uniq, labels = in_batch_labels(targets_all)  # candidates: the global batch's targets on every rank
    if multi:
        labels = labels[lo:hi]
    ent: list[torch.Tensor] = []
    frozen = trajectory_states(tr, pairs, G)
    old, user_old, tgt_rep, (r, rd, rcont, ranks) = reward_forward(tr, pairs, targets, hists, G, entropy=ent,
                                                                   frozen=frozen)
    with torch.no_grad(), tr.autocast():
        old_logp, cmask = pad_logps(old)
        R = r.view(-1, G)
        adv = compute_advantages(R, rc.advantage)
        best = best_trajectory_mask(R, rc.item_topk).view(-1)
        best_idx = best.nonzero().flatten()
        sel_labels = labels.repeat_interleave(G)[best_idx]
        sel_targets = tgt_rep[best_idx]
        cand = uniq
        if tr.cls is not None:
            old_item_logp = tr.rec.catalogue_logprob(user_old[best_idx].to(tr.acc.device), sel_targets)
        else:
            cand = uniq + negative_ids(tr, uniq)  # labels index the leading in-batch targets
            item_old = tr.items.vectors(cand)
            old_item_logp = tr.item_logprob(user_old[best_idx].to(tr.acc.device), item_old,
                                            sel_labels.to(tr.acc.device), cand)
        ref_logp = None
        if rc.kl_coef > 0:
            with tr.policy.disable_adapter():
                ref = completion_logprobs(tr.policy, pairs, rc.temperature, pad_id=tr.pad_id,
                                          batch_size=rc.eval_batch_size, frozen=frozen)
            ref_logp, _ = pad_logps(ref)
    rec["reward_fwd_s"] = time.perf_counter() - t
    adv_flat = adv.view(-1).to(tr.acc.device)
    # the control arm of benchmarks/recpo_learning.py: the token loss gets the advantages of other trajectories
    # (a seeded permutation over the whole step, its own generator); the item loss keeps the true ones
    tok_adv = adv_flat
    if rc.shuffle_advantages:
        tok_adv, _ = shuffled_advantages(adv_flat, step_seed(rc.seed, tr.step, 3))
    # diagnostics (no grad, no random numbers): KL of the rollout policy to the reference (the base model, adapter
    # disabled; one extra no-grad forward when the KL penalty is off), entropy of the sampling distribution
    t = time.perf_counter()
    with torch.no_grad(), tr.autocast():
        if ref_logp is None:
            with tr.policy.disable_adapter():
                ref_diag, _ = pad_logps(completion_logprobs(tr.policy, pairs, rc.temperature, pad_id=tr.pad_id,
                                                            batch_size=rc.eval_batch_size, frozen=frozen))
        else:
            ref_diag = ref_logp
        kl_ref = k3_kl(old_logp, ref_diag, cmask)
        ent_pad, _ = pad_logps([e.detach() for e in ent])
        entropy = masked_mean(ent_pad, cmask)
    rec["diag_s"] = time.perf_counter() - t

    # mu update passes (eval mode: no dropout -> ratio exactly 1 before the first update)
    t = time.perf_counter()
    for _ in range(rc.mu):
        tok_loss, it_loss, kl, tstats, istats = update_pass(tr, pairs, old_logp, cmask, ref_logp, tok_adv,
                                                            adv_flat[best_idx], best_idx, old_item_logp, cand,
                                                            sel_labels, sel_targets, frozen)
        gnorm = tr.optimizer_step()
    rec["update_s"] = time.perf_counter() - t
    n_tok = float(sum(len(c) for _, c in pairs))
    lens = [len(c) - 1 for _, c in pairs]  # reasoning tokens: the completion without its closing <answer>
    rec.update({
        **mean_std("reward", r), **mean_std("reward_ndcg", rd), **mean_std("reward_prob", rcont),
        "reward_best": float(R.max(dim=1).values.mean()), "mean_rank": float(ranks.float().mean()),
        "flat_group_frac": flat_group_frac(R), "flat_rank_frac": flat_group_frac(ranks.view(-1, G)),
        "adv_mean": float(adv.mean()), "adv_std": float(adv.std()) if adv.numel() > 1 else 0.0,
        "adv_abs_mean": float(adv.abs().mean()),
        "adv_shuffled_frac": float((tok_adv != adv_flat).float().mean()),
        "kl_ref": kl_ref, "entropy": entropy,
        "token_loss": tok_loss.item(), "item_loss": it_loss.item(), "kl": kl.item(),
        "ratio_mean": tstats["ratio_mean"], "clip_frac": tstats["clip_frac"],
        "item_ratio_mean": istats["item_ratio_mean"], "item_clip_frac": istats["item_clip_frac"],
        "grad_norm": gnorm,
        "reasoning_len": (n_tok - len(pairs)) / len(pairs),
        "forced_frac": sum(bool(getattr(x, "forced", False)) for x in trajs) / len(trajs),
        "cut_frac": sum(bool(getattr(x, "forced", False)) and n >= rc.max_reasoning_tokens
                        for x, n in zip(trajs, lens)) / len(lens),
        "tokens_per_s": float(stats.get("tokens_per_s", n_tok / max(rec["rollout_s"], 1e-9))),
        "frozen_split": int(tr._frozen_split or 0),  # llm.frozen_states: 0 = full forwards
    })
    return rec


def update_pass(tr, pairs, old_logp, cmask, ref_logp, tok_adv, item_adv, best_idx, old_item_logp, cand, sel_labels,
                sel_targets, frozen=None):
    """One gradient of ``token_loss + item_loss_coef * item_loss + kl_coef * kl``, accumulated over micro-batches.

    ``tok_adv`` ``[B]``: each trajectory's advantage in the token loss; ``item_adv`` ``[M]``: the advantages of
    the ``best_idx`` trajectories in the item loss (the same numbers unless ``recpo.shuffle_advantages``).

    Trajectories are processed ``recpo.micro_batch_size`` at a time; each chunk's token loss is weighted by
    its share of the batch's valid tokens and its item-loss terms by ``1/M``, so the accumulated gradient
    equals the full-batch one. With N processes the token count and ``M`` are the global batch's (summed over
    the ranks): each rank's loss is its share of the global loss and the summed gradients are one process's
    (the returned losses and statistics stay this rank's own means). The in-batch item vectors are encoded once with grad; chunks backpropagate
    into a detached leaf copy and the item encoder gets the summed gradient at the end.
    """
    from r2ec.llm.rollout import completion_logprobs

    rc = tr.rc
    dev = tr.acc.device
    tr.opt.zero_grad(set_to_none=True)
    n_valid = cmask.sum().clamp_min(1.0)
    M = int(best_idx.numel())
    n_glob, M_glob = n_valid, M
    if getattr(tr, "world", 1) > 1:
        from r2ec import dist
        tot = dist.all_sum(tr.acc, torch.tensor([float(cmask.sum()), float(M)], dtype=torch.float64))
        n_glob, M_glob = torch.as_tensor(float(tot[0]), dtype=n_valid.dtype).clamp_min(1.0), int(tot[1])
    best_pos = {int(i): j for j, i in enumerate(best_idx.tolist())}
    mb = rc.micro_batch_size if rc.micro_batch_size > 0 else len(pairs)
    chunked = mb < len(pairs)
    if chunked and tr.acc.distributed_type == DistributedType.DEEPSPEED:
        raise UserError("recpo.micro_batch_size: DeepSpeed steps on every backward; use "
                         "recpo.micro_batch_size=0 (one backward per update pass) under DeepSpeed")
    items = leaf = None
    if tr.cls is None:
        with tr.autocast():
            items = tr.items.vectors(cand)
        # chunked: chunks backpropagate into a leaf copy, the item encoder gets the summed grad at the end
        leaf = items.detach().requires_grad_(True) if chunked else items
    tok_sum = it_sum = kl_sum = 0.0
    clip_n = ratio_sum = 0.0
    it_ratio, it_clip = [], []
    for s in range(0, len(pairs), mb):
        idx = list(range(s, min(s + mb, len(pairs))))
        with tr.autocast():
            new, user_new = completion_logprobs(tr.policy, [pairs[i] for i in idx], rc.temperature,
                                                pad_id=tr.pad_id, return_hidden=True, answer_id=tr.answer_id,
                                                frozen=None if frozen is None else frozen.subset(idx))
            new_logp, _ = pad_logps(new)
            w = cmask[idx].sum() / n_glob  # chunk's share of the valid tokens: token mean over the batch
            w_own = w if n_glob is n_valid else cmask[idx].sum() / n_valid
            tc = new_logp.shape[1]
            om, cm = old_logp[idx][:, -tc:], cmask[idx][:, -tc:]
            tl, ts = clipped_token_loss(new_logp, om, tok_adv[idx], cm, rc.clip_low, rc.clip_high)
            loss = w * tl
            tok_sum += float(w_own * tl.detach())
            clip_n += ts["clip_frac"] * float(cm.sum())
            ratio_sum += ts["ratio_mean"] * float(cm.sum())
            if ref_logp is not None:
                klc = kl_penalty(new_logp, ref_logp[idx][:, -tc:], cm)
                loss = loss + rc.kl_coef * w * klc
                kl_sum += float(w_own * klc.detach())
            sel = [k for k, i in enumerate(idx) if i in best_pos]
            if sel:
                js = torch.as_tensor([best_pos[idx[k]] for k in sel], device=dev)
                u = user_new[torch.as_tensor(sel, device=dev)].float()
                if tr.cls is not None:
                    nl = tr.rec.catalogue_logprob(u, sel_targets[js.cpu()])
                else:
                    nl = tr.item_logprob(u, leaf, sel_labels[js.cpu()].to(dev), cand)
                il, ist = clipped_item_loss(nl, old_item_logp[js], item_adv[js], rc.clip_low, rc.clip_high)
                loss = loss + rc.item_loss_coef * il * (len(sel) / M_glob)
                it_sum += float(il.detach()) * len(sel) / M
                it_ratio.append(ist["item_ratio_mean"] * len(sel))
                it_clip.append(ist["item_clip_frac"] * len(sel))
        tr.backward(loss)
    if chunked and items is not None and leaf.grad is not None:
        tr.backward((items * leaf.grad).sum())
    nv = float(n_valid)
    tstats = {"clip_frac": clip_n / nv, "ratio_mean": ratio_sum / nv}
    istats = {"item_ratio_mean": sum(it_ratio) / max(M, 1), "item_clip_frac": sum(it_clip) / max(M, 1)}
    return (torch.tensor(tok_sum), torch.tensor(it_sum), torch.tensor(kl_sum), tstats, istats)
