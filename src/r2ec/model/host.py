"""The backbone + LoRA of R2ec under the run's precision, without an optimizer: what the item-table stage and a
loaded run (latency, recommend) need. The trainer is its own host (:class:`r2ec.train.harness.LLMHarness` has the
same attributes: ``p, ds, tok, pad_id, answer_id, policy, acc, cache_dir, progress, step, infer(), autocast()``).
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Callable

import torch

from r2ec.config import Params
from r2ec.io import Dataset

log = logging.getLogger(__name__)


class ModelHost:
    """Backbone of ``llm.*`` + a LoRA adapter of ``lora.*`` (seeded by ``seed``, as a fresh training run builds it),
    ``setup(model)`` attaching extra submodules, prepared by accelerate for ``llm.autocast``; no optimizer."""

    def __init__(self, ds: Dataset, params: Params, seed: int, cache_dir: Path | None, progress: bool = False,
                 setup: Callable[[torch.nn.Module, torch.device], None] | None = None):
        from accelerate import Accelerator

        from r2ec.llm.backbone import add_lora, answer_token_id, backbone_cache_name, load_backbone, uses_bf16
        from r2ec.seeding import seed_all
        from r2ec.train.harness import allow_precision

        self.ds, self.p = ds, params
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.progress = progress
        self.step = 0
        self.version = 0
        mp = "bf16" if uses_bf16(params.llm.autocast) else "no"
        allow_precision(mp)
        self.acc = Accelerator(cpu=not torch.cuda.is_available(), mixed_precision=mp,
                               step_scheduler_with_optimizer=False)
        seed_all(seed)
        self.backbone_cache = (self.cache_dir / "backbones" / backbone_cache_name(params.llm.backbone)
                               if self.cache_dir else None)
        model, tok = load_backbone(params.llm, self.backbone_cache)
        self.tok = tok
        self.pad_id = int(tok.pad_token_id)
        self.answer_id = answer_token_id(tok)
        model = add_lora(model, params.lora, seed=seed)
        model.to(self.acc.device)
        if setup is not None:
            setup(model, self.acc.device)
        self.policy = self.acc.unwrap_model(self.acc.prepare(model))
        self.policy.eval()
        self._copy = None
        if params.llm.inference_copy:
            from r2ec.llm.inference_copy import InferenceCopy
            self._copy = InferenceCopy(self.policy, bf16=mp == "bf16")

    def autocast(self):
        return self.acc.autocast() if self.acc.mixed_precision != "no" else contextlib.nullcontext()

    def infer(self):
        """``(model, context)`` for no-grad passes, as :meth:`r2ec.train.harness.LLMHarness.infer`."""
        if self._copy is None:
            return self.policy, self.autocast()
        return self._copy.get(self.version), contextlib.nullcontext()

    def stepped(self) -> None:
        """The weights changed (a loaded state): the inference copy must be re-merged."""
        self.version += 1
