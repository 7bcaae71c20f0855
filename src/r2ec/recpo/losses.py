"""RecPO losses (DESIGN.md §4): clipped token loss, clipped item loss, KL penalty, best-trajectory gating.

Clipped surrogate (PPO with DAPO's asymmetric clip; paper eps_low = 0.2, eps_high = 0.28), per element:

    l(rho, A) = -min(rho * A, clip(rho, 1 - eps_low, 1 + eps_high) * A)

* Token loss: ``rho_t = exp(logp_new_t - logp_old_t)`` per completion token, where ``logp_old`` are the
  REAL log-probs of the rollout policy (computed once per rollout batch, before any update), so with
  ``mu > 1`` update passes the ratio moves away from 1 and clipping acts (the reference code detaches the
  current log-probs and its ratio is always 1). Every token of trajectory (u, g) gets the trajectory's
  advantage ``A_ug``. Aggregation: DAPO-style **token mean** -- the sum of ``l`` over all valid completion
  tokens of the batch divided by the number of valid tokens (long trajectories weigh more than short ones;
  no per-sequence length normalisation).
* Item loss: for the selected (best) trajectories only, the user vector ``u`` (hidden state at ``<answer>``
  after the reasoning) is scored against the **in-batch** target items (the unique targets of the batch's
  users; an item that is the target of several users appears once, so a shared target is never a negative):
  ``logits = cos(u, v_j) / tau`` and ``p = softmax(logits)[own target]``. The ratio is
  ``rho = p_new / p_old = exp(log p_new - log p_old)`` with ``p_old`` from the rollout policy, and the loss is
  the mean over selected trajectories of ``l(rho, A_ug)`` (same advantage as the trajectory's tokens).
  With ``recpo.uniform_negatives = K > 0`` the candidate set also holds K catalogue items drawn uniformly
  (encoded with gradient like the targets): Mixed Negative Sampling (Yang et al., WWW 2020), which
  lets the softmax see items the batch's popularity-biased targets never show.
* KL (off by default, ``recpo.kl_coef``): k3 estimator ``exp(ref - new) - (ref - new) - 1`` per token against
  the reference policy (the model with the LoRA adapter disabled), token mean like the token loss.

The item loss's log-probabilities (in-batch / catalogue softmax) live in :mod:`r2ec.train.losses`, shared
with the baselines.
"""

from __future__ import annotations

import torch


def clipped_surrogate(ratio: torch.Tensor, adv: torch.Tensor, eps_low: float, eps_high: float) -> torch.Tensor:
    """Element-wise ``-min(ratio * adv, clip(ratio, 1 - eps_low, 1 + eps_high) * adv)``."""
    return -torch.minimum(ratio * adv, torch.clamp(ratio, 1.0 - eps_low, 1.0 + eps_high) * adv)


def _clip_fraction(ratio: torch.Tensor, adv: torch.Tensor, eps_low: float, eps_high: float) -> torch.Tensor:
    """Share of elements whose gradient is cut by the clip (the clipped branch is the minimum)."""
    return (((ratio < 1.0 - eps_low) & (adv < 0)) | ((ratio > 1.0 + eps_high) & (adv > 0))).float()


def clipped_token_loss(new_logp: torch.Tensor, old_logp: torch.Tensor, adv: torch.Tensor, mask: torch.Tensor,
                       eps_low: float = 0.2, eps_high: float = 0.28) -> tuple[torch.Tensor, dict[str, float]]:
    """Token-mean clipped surrogate.

    ``new_logp``, ``old_logp``, ``mask``: ``[B, T]`` (mask 1 on valid completion tokens); ``adv``: ``[B]``.
    Returns ``(loss, stats)`` with stats ``clip_frac`` and ``ratio_mean`` over valid tokens.
    """
    m = mask.to(new_logp.dtype)
    n = m.sum().clamp_min(1.0)
    ratio = torch.exp(new_logp - old_logp.detach())
    a = adv.detach().to(new_logp.dtype).view(-1, 1).expand_as(new_logp)
    loss = (clipped_surrogate(ratio, a, eps_low, eps_high) * m).sum() / n
    with torch.no_grad():
        stats = {"clip_frac": float((_clip_fraction(ratio, a, eps_low, eps_high) * m).sum() / n),
                 "ratio_mean": float((ratio * m).sum() / n)}
    return loss, stats


def clipped_item_loss(new_logp: torch.Tensor, old_logp: torch.Tensor, adv: torch.Tensor,
                      eps_low: float = 0.2, eps_high: float = 0.28) -> tuple[torch.Tensor, dict[str, float]]:
    """Mean over selected trajectories of the clipped surrogate with ``rho = p_new / p_old``.

    ``new_logp``/``old_logp``: ``[M]`` log-probabilities of the own target (see
    :func:`in_batch_target_logprob`, or a classification head's log-softmax for the ``cls_head`` variant);
    ``adv``: ``[M]`` advantages of those trajectories. An empty selection gives a zero loss.
    """
    if new_logp.numel() == 0:
        return new_logp.sum() * 0.0, {"item_clip_frac": 0.0, "item_ratio_mean": 1.0}
    ratio = torch.exp(new_logp - old_logp.detach())
    a = adv.detach().to(ratio.dtype)
    loss = clipped_surrogate(ratio, a, eps_low, eps_high).mean()
    with torch.no_grad():
        stats = {"item_clip_frac": float(_clip_fraction(ratio, a, eps_low, eps_high).mean()),
                 "item_ratio_mean": float(ratio.mean())}
    return loss, stats


def kl_penalty(new_logp: torch.Tensor, ref_logp: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Token-mean k3 estimate of KL(pi_new || pi_ref): ``exp(ref - new) - (ref - new) - 1`` (>= 0)."""
    m = mask.to(new_logp.dtype)
    d = ref_logp.detach() - new_logp
    return ((torch.exp(d) - d - 1.0) * m).sum() / m.sum().clamp_min(1.0)


def best_trajectory_mask(rewards: torch.Tensor, topk: int = 1) -> torch.Tensor:
    """Bool ``[U, G]``: the ``topk`` highest-reward trajectories of each user (ties: lowest index first)."""
    if rewards.dim() != 2:
        raise ValueError(f"rewards must be [users, G], got {tuple(rewards.shape)}")
    if not 1 <= topk <= rewards.shape[1]:
        raise ValueError(f"topk must lie in [1, {rewards.shape[1]}], got {topk}")
    order = torch.argsort(-rewards.to(torch.float32), dim=1, stable=True)[:, :topk]
    mask = torch.zeros_like(rewards, dtype=torch.bool)
    mask.scatter_(1, order, True)
    return mask
