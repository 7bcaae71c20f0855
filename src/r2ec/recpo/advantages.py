"""Group-relative advantage estimators over ``rewards [U, G]`` (U users, G trajectories each).

GRPO:  A_ug = (r_ug - mean_g r_u.) / (std_g r_u. + eps)   (unbiased std over the group, as TRL; eps = 1e-4)
RLOO:  A_ug = r_ug - (sum_g' r_ug' - r_ug) / (G - 1)      (true leave-one-out baseline; = G/(G-1) (r - mean))

The reference code's "leave-one-out" is ``r (1 + 1/G) - mean`` which is not RLOO; we do not copy it.
"""

from __future__ import annotations

import torch


def grpo_advantages(rewards: torch.Tensor, eps: float = 1e-4) -> torch.Tensor:
    """Group z-score; a group with identical rewards gets zero advantages. Needs G >= 2."""
    r = rewards.to(torch.float32)
    if r.dim() != 2 or r.shape[1] < 2:
        raise ValueError(f"rewards must be [users, G>=2], got {tuple(r.shape)}")
    return (r - r.mean(dim=1, keepdim=True)) / (r.std(dim=1, keepdim=True) + eps)


def rloo_advantages(rewards: torch.Tensor) -> torch.Tensor:
    """Reward minus the mean reward of the group's other G-1 trajectories."""
    r = rewards.to(torch.float32)
    if r.dim() != 2 or r.shape[1] < 2:
        raise ValueError(f"rewards must be [users, G>=2], got {tuple(r.shape)}")
    g = r.shape[1]
    return r - (r.sum(dim=1, keepdim=True) - r) / (g - 1)


def advantages(rewards: torch.Tensor, kind: str) -> torch.Tensor:
    if kind == "grpo":
        return grpo_advantages(rewards)
    if kind == "rloo":
        return rloo_advantages(rewards)
    raise ValueError(f"unknown advantage estimator {kind!r} (grpo | rloo)")
