"""R2ec's learned readout (``readout.rank > 0``): a tied low-rank map between the shared encoder and the scores.

The paper's recommendation head is parameter-free: ``s(u, i) = cos(h_u, h_i) / tau``. At CPU scale that head,
trained through LoRA on a few thousand users, learns the popularity ranking and nothing else (docs/methods/r2ec.md:
Spearman .995 with Popularity), while a linear probe of the same frozen states beats popularity by 2x.
The readout is that probe made part of the head -- a documented deviation, like ``r2ec_cls_head``::

    s(u, i) = (A^T z_u) . (A^T z_i) + w log p(i)
    z_u = (h_u - mu_U) / sd_U        mu_U, sd_U: per-dimension mean / std of the fitting users' states
    z_i = (h_i - mu_I) / sd_I        mu_I, sd_I: per-dimension mean / std of the current item table

``A`` (``[H, rank]``) is shared by users and items (one encoder, one projection), so items stay encoded by the
same model and new items need no retraining. Standardising removes the template direction shared by every
prompt (mean pairwise cosine .98) that cosine otherwise spends its range on. ``A`` is fitted once on cached
states of the base model (:func:`fit_readout`, full-batch Adam on the full-catalogue softmax), then trained
further with the adapter by whatever steps follow.
"""

from __future__ import annotations

import time
from typing import Any

import torch

EPS = 1e-6


def table_stats(table: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(mean, std)`` ``[H]`` of the item vectors (rows 1..N of an item table; row 0 is the pad)."""
    t = table[1:].float()
    return t.mean(0), t.std(0) + EPS


class Readout(torch.nn.Module):
    """``A`` (trainable) plus the users' standardisation stats (buffers, saved with ``state_dict``).

    ``user_map=True`` adds a users-only projection ``M`` (``[H, rank]``): users score as ``M^T z_u`` against the
    items' ``A^T z_i``. The reasoning variants use it (:func:`distill_user_map`): a state read after reasoning is
    not the state ``A`` was fitted on (per-dimension correlation with the same user's no-reasoning state ~0.2)."""

    def __init__(self, hidden: int, rank: int, seed: int, user_map: bool = False):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.proj = torch.nn.Parameter(0.01 * torch.randn(hidden, rank, generator=g))
        self.user_proj = torch.nn.Parameter(self.proj.detach().clone()) if user_map else None
        self.register_buffer("user_mean", torch.zeros(hidden))
        self.register_buffer("user_std", torch.ones(hidden))

    def set_user_stats(self, states: torch.Tensor) -> None:
        """Standardise users by the per-dimension mean and std of ``states`` (``[M, H]``)."""
        with torch.no_grad():
            self.user_mean.copy_(states.float().mean(0))
            self.user_std.copy_(states.float().std(0) + EPS)

    def users(self, h: torch.Tensor) -> torch.Tensor:
        """``[B, rank]`` projected standardised user states."""
        p = self.proj if self.user_proj is None else self.user_proj
        return ((h.float().to(p.device) - self.user_mean) / self.user_std) @ p.float()

    def items(self, h: torch.Tensor, stats: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """``[K, rank]`` projected item vectors, standardised by the item table's ``stats``."""
        p = self.proj
        mu, sd = (s.to(p.device) for s in stats)
        return ((h.float().to(p.device) - mu) / sd) @ p.float()

    def logits(self, user: torch.Tensor, items: torch.Tensor,
               stats: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """``[B, K]`` readout scores of user states against item vectors (differentiable in both)."""
        return self.users(user) @ self.items(items, stats).T

    def scores(self, user: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
        """``[B, N+1]`` scores against a whole item table, column 0 (pad) = -inf."""
        s = self.logits(user, table, table_stats(table))
        s[:, 0] = float("-inf")
        return s


def fit_readout(readout: Readout, users: torch.Tensor, targets: torch.Tensor, histories: list[list[int]],
                table: torch.Tensor, prior: torch.Tensor | None, *, epochs: int, lr: float,
                weight_decay: float) -> dict[str, Any]:
    """Fit ``readout.proj`` on fixed states: full-batch Adam on the full-catalogue softmax loss
    ``-mean_b log softmax_j(s(u_b, j))[target_b]`` with ``s`` as in the module docstring (prior included),
    history items other than the target excluded as the evaluator excludes them. Sets the user stats from
    ``users`` first. Returns ``{"loss_first", "loss_last", "seconds", "losses"}`` (one loss per epoch)."""
    from r2ec.eval.ranking import history_mask
    from r2ec.train.losses import catalogue_target_logprob
    t0 = time.perf_counter()
    readout.set_user_stats(users)
    dev = readout.proj.device
    table = table.float().to(dev)
    stats = table_stats(table)
    users, targets = users.float().to(dev), targets.to(dev)
    offset = torch.zeros(table.shape[0], device=dev) if prior is None else prior.float().to(dev).clone()
    offset[0] = float("-inf")  # the pad item
    mask = history_mask(torch.empty(users.shape[0], table.shape[0], device=dev), histories, targets)
    opt = torch.optim.Adam([readout.proj], lr=lr, weight_decay=weight_decay)
    losses = []
    trainable = readout.proj.requires_grad
    readout.proj.requires_grad_(True)  # the fit trains A even where the steps that follow leave it fixed
    try:
        for _ in range(epochs):
            s = (readout.logits(users, table, stats) + offset.view(1, -1)).masked_fill(mask, float("-inf"))
            loss = -catalogue_target_logprob(s, targets).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(loss.item())
    finally:
        readout.proj.grad = None
        readout.proj.requires_grad_(trainable)
    return {"loss_first": losses[0] if losses else None, "loss_last": losses[-1] if losses else None,
            "seconds": time.perf_counter() - t0, "losses": losses}


def teacher_projection(readout: Readout, teacher_states: torch.Tensor) -> torch.Tensor:
    """``[M, rank]`` ``T = A^T z(teacher)``: the teacher states projected by ``A`` on the user stats ``A`` was fitted
    with (whatever ``user_proj`` holds now)."""
    with torch.no_grad():
        return ((teacher_states.float().to(readout.user_mean.device) - readout.user_mean) / readout.user_std
                ) @ readout.proj.float()


def fit_user_map(readout: Readout, target: torch.Tensor, student_states: torch.Tensor,
                 ridge: float) -> dict[str, Any]:
    """Fit ``readout.user_proj`` by ridge regression of the standardised student states onto ``target``::

        M = argmin ||Z_s M - T||^2 + ridge ||M||^2 = (Z_s^T Z_s + ridge I)^-1 Z_s^T T

    with ``Z_s`` the student states standardised by their own mean / std (which become the readout's user stats).
    Returns ``{"users", "r2"}`` (the fit's share of explained target variance)."""
    with torch.no_grad():
        target = target.float().to(readout.user_mean.device)
        readout.set_user_stats(student_states)
        z = ((student_states.float().to(readout.user_mean.device) - readout.user_mean) / readout.user_std)
        eye = torch.eye(z.shape[1], device=z.device)
        m = torch.linalg.solve(z.T @ z + ridge * eye, z.T @ target)
        readout.user_proj.copy_(m)
        resid = (z @ m - target).pow(2).sum()
        r2 = 1.0 - float(resid / (target - target.mean(0)).pow(2).sum().clamp_min(1e-12))
    return {"users": int(z.shape[0]), "r2": r2}


def distill_user_map(readout: Readout, teacher_states: torch.Tensor, student_states: torch.Tensor,
                     ridge: float) -> dict[str, Any]:
    """Fit ``readout.user_proj`` so that student states (read after reasoning) project where the teacher states of
    the same users (read right after the prompt, what ``A`` was fitted on) do: :func:`fit_user_map` onto
    ``T = A^T z(teacher)`` (:func:`teacher_projection`). Returns ``{"users", "r2"}``."""
    return fit_user_map(readout, teacher_projection(readout, teacher_states), student_states, ridge)
