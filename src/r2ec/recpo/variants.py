"""The R2ec variants (method names of ``config.R2EC_VARIANTS``) as small feature flags."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from r2ec.config import R2EC_VARIANTS, Params, to_dict
from r2ec.errors import UserError


@dataclass(frozen=True)
class Variant:
    name: str
    train: bool = True          # False: zero-shot (evaluate the untrained backbone)
    reasoning: bool = True      # False: <answer> right after the prompt, no generation (contrastive training)
    cls_head: bool = False      # True: Linear(H, N+1) head on the user vector instead of item embeddings
    beta: float | None = None   # reward fusion override (None: recpo.beta)


VARIANTS = {
    "r2ec": Variant("r2ec"),
    "r2ec_zeroshot": Variant("r2ec_zeroshot", train=False),
    "r2ec_no_reasoning": Variant("r2ec_no_reasoning", reasoning=False),
    "r2ec_no_rd": Variant("r2ec_no_rd", beta=1.0),   # w/o R_d: only the continuous softmax-prob reward
    "r2ec_no_rc": Variant("r2ec_no_rc", beta=0.0),   # w/o R_c: only the discrete NDCG reward
    "r2ec_cls_head": Variant("r2ec_cls_head", cls_head=True),
}
assert set(VARIANTS) == set(R2EC_VARIANTS)


def get_variant(method: str) -> Variant:
    try:
        return VARIANTS[method]
    except KeyError:
        raise UserError(f"unknown R2ec variant {method!r}; known: {', '.join(VARIANTS)}") from None


def resolve(params: Params, method: str) -> tuple[Variant, Any]:
    """``(variant, training section)`` of ``method``: ``recpo``, or for ``r2ec_no_reasoning`` its contrastive overlay
    (its own budget, ``contrastive``, over all train samples; every other ``recpo`` key is shared). ``r2ec_cls_head``
    trains its head with the item loss even where ``recpo.item_loss_coef`` is 0 (weight 1, the paper's)."""
    var = get_variant(method)
    if var.cls_head and params.recpo.item_loss_coef == 0:
        # the classification head learns only through the item loss: RL on the reasoning alone would leave it at
        # its random initialisation, so this ablation keeps the paper's sum
        return var, dataclasses.replace(params.recpo, item_loss_coef=1.0)
    if var.reasoning:
        return var, params.recpo
    shared = {k: v for k, v in to_dict(params.contrastive).items() if k in to_dict(params.recpo)}
    return var, dataclasses.replace(params.recpo, **shared, train_max_samples=0)
