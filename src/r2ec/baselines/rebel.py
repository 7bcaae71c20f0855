"""LangPTune's losses and rewards: REBEL for the profile LLM, InfoNCE for the dense retriever.

REBEL (Gao et al. 2024) regresses, per user with two sampled profiles ``y0, y1``, the difference of their
policy log-ratios onto ``eta`` times the difference of their rewards::

    loss = mean_users ( [log pi(y0) - log pi_old(y0)] - [log pi(y1) - log pi_old(y1)] - eta * (r0 - r1) )^2

with sequence log-probs (summed over the profile's tokens) and ``pi_old`` the policy that sampled them (the
official code's form). Rewards are NDCG or MRR of the target over the full catalogue minus ``kl_coef`` times
the summed policy/reference log-ratio of the profile, whitened over the batch.
"""

from __future__ import annotations

import torch

from r2ec.train.losses import in_batch_target_logprob


def whiten(x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """``(x - mean) / sqrt(var + eps)`` with the biased variance (over all elements)."""
    x = x.float()
    return (x - x.mean()) * torch.rsqrt(x.var(unbiased=False) + eps)


def rebel_loss(new_logp: torch.Tensor, old_logp: torch.Tensor, rewards: torch.Tensor, eta: float) -> torch.Tensor:
    """The REBEL regression loss (module docstring); all inputs ``[B, 2]`` (sequence log-probs, rewards)."""
    ratio = new_logp.float() - old_logp.float()
    r = rewards.float().to(ratio.device)
    return ((ratio[:, 0] - ratio[:, 1]) - eta * (r[:, 0] - r[:, 1])).pow(2).mean()


def rank_reward(ranks: torch.Tensor, kind: str) -> torch.Tensor:
    """Reward of 1-based full-catalogue ranks: ``ndcg`` = 1/log2(rank + 1), ``mrr`` = 1/rank."""
    r = torch.as_tensor(ranks).float()
    if kind == "ndcg":
        return 1.0 / torch.log2(r + 1.0)
    if kind == "mrr":
        return 1.0 / r
    raise ValueError(f"langptune.reward: unknown reward {kind!r} (use 'ndcg' or 'mrr')")


def info_nce(queries: torch.Tensor, keys: torch.Tensor, labels: torch.Tensor, tau: float,
             log_q: torch.Tensor | None = None, log_prior: torch.Tensor | None = None) -> torch.Tensor:
    """Mean over queries of ``-log softmax_k(cos(query, key_k) / tau + log_prior_k - log q_k)[label]`` (in-batch
    negatives; both terms default to 0).

    ``log_q`` (``[K]``): log-probability that key ``k`` enters a batch; subtracting it is the sampling-bias (logQ)
    correction of Yi et al. 2019: in-batch negatives are drawn in proportion to item popularity, so without it
    the loss pushes popular items down and the retriever ranks below popularity. ``log_prior`` (``[K]``): the
    popularity prior the ranking adds to the same scores (logit adjustment), so the cosine learns the residual."""
    off = log_prior
    if log_q is not None:
        off = -log_q if off is None else off - log_q
    return -in_batch_target_logprob(queries, keys, labels, tau, key_offset=off).mean()
