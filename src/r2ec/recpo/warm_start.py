"""``recpo.warm_start``: a reasoning variant starts from another run's best adapter, readout and item table.

``tr`` is the R2ec trainer (:class:`r2ec.recpo.trainer.R2ecTrainer`).
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from r2ec.errors import UserError
from r2ec.model.readout_fit import load_readout, readout_distill

log = logging.getLogger(__name__)


def warm_start(tr: Any) -> bool:
    """Start a reasoning variant from another run's best adapter and item table (``recpo.warm_start``).

    A deviation from the paper (which starts RecPO from the base model), used at CPU scale where a few
    hundred RecPO users cannot make a 135M model's embeddings usable: the contrastive run
    (``r2ec_no_reasoning``) does that cheaply without generation, RecPO then trains reasoning on top.
    """
    src = tr.rc.warm_start
    if not src or not tr.var.reasoning:
        return False
    d = tr.run_dir.parent / src / "best"
    if not (d / "trainable.pt").exists():
        raise UserError(f"recpo.warm_start={src!r}: {d / 'trainable.pt'} not found; train {src} on this "
                         f"dataset first (the pipeline does), or set recpo.warm_start to ''")
    state = torch.load(d / "trainable.pt", map_location="cpu")
    mods = tr.modules()
    lora = {k: v for k, v in state.items() if "lora_" in k}
    own = {f"{k}/{n}" for k, m in mods.items() for n, q in m.named_parameters()
           if q.requires_grad and "lora_" in n}
    if not lora or set(lora) != own:
        raise UserError(f"recpo.warm_start={src!r}: {d / 'trainable.pt'} holds {len(lora)} LoRA tensors, this "
                         f"run has {len(own)} (different lora.* params?)")
    with torch.no_grad():
        for k, m in mods.items():
            for n, q in m.named_parameters():
                if q.requires_grad and "lora_" in n:
                    q.copy_(state[f"{k}/{n}"].to(q.device, q.dtype))
    load_readout(tr.readout, d)
    tr.stepped()
    if (d / "item_table.pt").exists() and tr.cls is None:
        from r2ec.llm.encoder import load_item_table
        tr.table, _ = load_item_table(d / "item_table.pt")
        tr.table_step = 0
    log.info("%s: warm start from %s", tr.method, d)
    readout_distill(tr)
    return True
