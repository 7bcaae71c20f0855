"""The one scoring head of R2ec, used by training, evaluation, ``recommend`` and the latency table.

A user vector ``u`` scores every item ``i`` as

- ``cos(u, v_i) / tau`` against the item table (the paper's head), or
- ``readout(u, v_i)`` when the run has a learned readout (:mod:`r2ec.model.readout`), or
- ``cls(u)_i``, a ``Linear(H, N+1)`` classification head (``r2ec_cls_head``: no item table),

plus ``w * log p_hat(i)``, the popularity prior, when the run has one (:func:`r2ec.data.popularity.log_popularity_prior`).
The training losses use the same head on candidate subsets (:meth:`RecHead.candidate_logprob`,
:meth:`RecHead.catalogue_logprob`).
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from r2ec.train.losses import in_batch_target_logprob, target_logprob


def make_cls_head(hidden: int, n_items: int, seed: int, device: Any) -> torch.nn.Linear:
    """The classification head's ``Linear(H, N+1)``, seeded (``recpo.seed + 1``) without touching the global RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        head = torch.nn.Linear(hidden, n_items + 1).to(device)
        torch.nn.init.normal_(head.weight, std=0.02)
        torch.nn.init.zeros_(head.bias)
    return head


class RecHead:
    """Scores of user vectors over the catalogue (module docstring).

    ``table`` returns the current ``[N+1, H]`` item table (the trainer refreshes it; a loaded run's is fixed);
    ``prior`` returns the ``[N+1]`` log prior or None."""

    def __init__(self, tau: float, table: Callable[[], torch.Tensor | None], readout: Any = None,
                 cls: torch.nn.Linear | None = None, prior: Callable[[], torch.Tensor | None] = lambda: None):
        self.tau, self._table, self.readout, self.cls, self._prior = tau, table, readout, cls, prior

    @property
    def table(self) -> torch.Tensor | None:
        return self._table()

    def with_prior(self, scores: torch.Tensor) -> torch.Tensor:
        """``[B, N+1]`` catalogue scores plus the popularity prior (unchanged when it is off)."""
        lp = self._prior()
        return scores if lp is None else scores + lp.to(scores.device).view(1, -1)

    def table_scores(self, user: torch.Tensor) -> torch.Tensor:
        """``[B, N+1]`` item-table scores (no prior), differentiable in ``user``: the readout when it is on, else
        cos/tau."""
        if self.readout is not None:
            return self.readout.scores(user, self.table)
        from r2ec.llm.encoder import cosine_scores
        return cosine_scores(user, self.table.to(user.device), self.tau)

    def scores(self, user: torch.Tensor) -> torch.Tensor:
        """``[B, N+1]`` CPU scores of user vectors (column 0, no item, is -inf for the class head), prior included."""
        if self.cls is not None:
            s = self.cls(user.to(self.cls.weight.device).float()).float().cpu()
            s[:, 0] = float("-inf")
        else:
            s = self.table_scores(user.float()).cpu()
        return self.with_prior(s)

    def candidate_logprob(self, user: torch.Tensor, items: torch.Tensor, labels: torch.Tensor,
                          offset: torch.Tensor | None) -> torch.Tensor:
        """``[M]`` log-probs of each user row's label among candidate item vectors ``items`` (readout or cos/tau
        logits, plus ``offset``, e.g. the candidates' prior minus their ``log q``)."""
        if self.readout is not None:
            from r2ec.model.readout import table_stats
            return target_logprob(self.readout.logits(user, items, table_stats(self.table)), labels, offset)
        return in_batch_target_logprob(user, items, labels, self.tau, key_offset=offset)

    def catalogue_logprob(self, user: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """``[M]`` ``log softmax_j(cls(user)_j + prior_j)[target]`` over the catalogue: the item loss of the
        classification-head variant (with the popularity prior when it is on, as in its ranking)."""
        logits = self.with_prior(self.cls(user).float())[:, 1:]
        return torch.log_softmax(logits, -1).gather(1, (targets - 1).view(-1, 1).to(logits.device)).squeeze(1)


def attach_heads(model: torch.nn.Module, var: Any, ro: Any, rc: Any, n_items: int, device: Any):
    """Attach the variant's extra trainable submodules to the LoRA model (one prepared model, one trainable state):
    the readout (``readout.rank > 0``, trained variants but the class head) and the classification head.
    Returns ``(readout, cls)``, each None when absent."""
    H = model.config.hidden_size if hasattr(model, "config") else model.get_base_model().config.hidden_size
    readout = cls = None
    if ro.rank > 0 and var.train and not var.cls_head:
        from r2ec.model.readout import Readout
        readout = Readout(H, ro.rank, ro.seed, user_map=var.reasoning and ro.distill_users > 0).to(device)
        # a submodule: saved with the adapter, and trained with it unless readout.trainable is off (the fit and the
        # distillation use thousands of users; a step's item loss sees a handful against a few dozen candidates)
        readout.requires_grad_(ro.trainable)
        model.r2ec_readout = readout
    if var.cls_head:
        cls = make_cls_head(H, n_items, rc.seed + 1, device)
        model.r2ec_cls_head = cls
    return readout, cls
