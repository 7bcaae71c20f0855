"""Diagnostics of a RecPO step (pure tensor functions; logged in every step's ``train_log.jsonl`` record).

They answer "why does (or doesn't) RL on the reasoning learn?": is there reward signal within the groups
(:func:`flat_group_frac`), how large are the advantages, how far the policy moved from the rollout policy
(ratio / clip fraction, in :mod:`r2ec.recpo.losses`) and from the reference (:func:`k3_kl`), how random it is
(:func:`masked_mean` of the token entropies), and the control arm of ``benchmarks/recpo_learning.py``
(:func:`shuffled_advantages`). None of them consumes the global random streams or changes a trained number.
"""

from __future__ import annotations

import torch


def _std(x: torch.Tensor) -> float:
    """Unbiased std of all elements (0 for a single element)."""
    return float(x.float().std()) if x.numel() > 1 else 0.0


def mean_std(prefix: str, x: torch.Tensor) -> dict[str, float]:
    """``{prefix: mean, prefix_std: std}`` of all elements of ``x``."""
    return {prefix: float(x.float().mean()), f"{prefix}_std": _std(x)}


def flat_group_frac(rewards: torch.Tensor) -> float:
    """Share of groups (rows of ``[U, G]``) whose G values are all exactly equal: no signal to compare."""
    r = rewards.float()
    if r.dim() != 2:
        raise ValueError(f"rewards must be [users, G], got {tuple(r.shape)}")
    if r.shape[0] == 0:
        return 0.0
    return float((r.max(dim=1).values == r.min(dim=1).values).float().mean())


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> float:
    """Mean of ``x`` over the positions where ``mask`` is 1 (0 when the mask is empty)."""
    m = mask.to(torch.float32)
    return float((x.float() * m).sum() / m.sum().clamp_min(1.0))


def k3_kl(logp: torch.Tensor, ref_logp: torch.Tensor, mask: torch.Tensor) -> float:
    """Token-mean k3 estimate of ``KL(pi || pi_ref)`` on tokens sampled from ``pi``:
    ``exp(ref - logp) - (ref - logp) - 1`` (>= 0), the estimator of ``recpo.kl_coef``'s penalty."""
    d = (ref_logp.float() - logp.float())
    return masked_mean(torch.exp(d) - d - 1.0, mask)


def shuffled_advantages(adv: torch.Tensor, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(adv[perm], perm)`` for a random permutation of all the step's trajectories drawn from its own
    ``torch.Generator`` seeded ``seed`` (the global random streams are untouched)."""
    g = torch.Generator().manual_seed(int(seed))
    perm = torch.randperm(adv.numel(), generator=g)
    return adv.view(-1)[perm.to(adv.device)], perm
