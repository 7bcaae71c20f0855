"""The R2ec variants (method names of ``config.R2EC_VARIANTS``) as small feature flags."""

from __future__ import annotations

from dataclasses import dataclass

from r2ec.config import R2EC_VARIANTS
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
