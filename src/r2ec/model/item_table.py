"""R2ec's item table: every item's prompt encoded at ``<answer>`` by the current adapter (no grad), its cache, its
refresh, the frozen prefix of the item prompts, and the item vectors WITH grad of a training step.

The freshly initialised adapter is the identity (LoRA B = 0): its table is the base model's, shared by all variants
and runs of one backbone/dataset, so it is cached (``cache_dir/item_tables/``) and built once by its own pipeline
stage (:func:`build_item_table`, which needs no trainer, optimizer or rollout engine).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path
from typing import Any

import torch

from r2ec.config import Params
from r2ec.io import Dataset, slug

log = logging.getLogger(__name__)


class ItemTable:
    """The ``[N+1, H]`` item table of a host's current adapter (see :mod:`r2ec.model.host`) and what encodes it.

    ``enabled=False`` (the classification-head variant) never encodes: that variant scores without a table."""

    def __init__(self, host: Any, item_batch_size: int, enabled: bool = True):
        from r2ec.llm.encoder import item_prompt_ids
        self.host, self.batch_size, self.enabled = host, item_batch_size, enabled
        t0 = time.perf_counter()
        self.item_ids = item_prompt_ids(host.tok, host.ds.items, host.ds.name, host.p.llm.system_prompt)
        log.info("rendered %d item prompts in %.1fs", len(self.item_ids), time.perf_counter() - t0)
        self.table: torch.Tensor | None = None
        self.step = -1
        self._prefix = None  # FrozenPrefix once built, False when not used

    def cache_path(self, kind: str, *extra: Any) -> Path | None:
        """``cache_dir/kind/<dataset>-<N>-<hash>.pt`` of what the untrained backbone computes on the item prompts
        (the hash covers the backbone, its precision and the prompts)."""
        h = self.host
        if h.cache_dir is None:
            return None
        from r2ec.llm.backbone import uses_bf16
        llm = h.p.llm
        key = hashlib.sha256(json.dumps([llm.backbone, llm.dtype, uses_bf16(llm.autocast), llm.inference_copy,
                                         self.item_ids, *extra]).encode())
        return h.cache_dir / kind / f"{slug(f'{h.ds.name}-{h.ds.n_items}-{key.hexdigest()[:16]}')}.pt"

    def init_cache(self) -> Path | None:
        """The cache file of the untrained adapter's table."""
        return self.cache_path("item_tables")

    def stale(self, step: int, every: int) -> bool:
        return self.table is None or step - self.step >= every

    def refresh(self, step: int) -> float:
        """Re-encode all items with the current adapter (no grad) as of ``step``. Returns seconds (0 if already
        current or disabled)."""
        from r2ec.llm.encoder import encode_items, load_item_table, save_item_table
        if not self.enabled or (self.table is not None and self.step == step):
            return 0.0
        from r2ec import dist
        h = self.host
        acc = getattr(h, "acc", None)
        n_proc = dist.world(acc)
        t0 = time.perf_counter()
        cache = self.init_cache() if step == 0 else None
        # N processes: the main process decides whether the cache is used, each rank encodes its shard of the
        # batches and the shards are summed (disjoint rows, zeros elsewhere: exact)
        if cache is not None and dist.from_main(acc, cache.exists()):
            self.table, _ = load_item_table(cache)
        else:
            kw = {} if n_proc == 1 else {"shard": (int(acc.process_index), n_proc)}
            pf = self.prefix()
            model, ctx = h.infer()
            with ctx:
                if pf is not None:
                    self.table = pf.table(model, self.batch_size, **kw)
                else:
                    self.table = encode_items(model, h.tok, h.ds.items, h.ds.name, h.p.llm,
                                              batch_size=self.batch_size, progress=h.progress,
                                              prompt_ids=self.item_ids, **kw)
            self.table = dist.all_sum(acc, self.table)
            if cache is not None and (n_proc == 1 or acc.is_main_process):
                save_item_table(cache, self.table, {"dataset": h.ds.name, "backbone": h.p.llm.backbone})
        self.step = step
        return time.perf_counter() - t0

    def prefix(self):
        """The item prompts' frozen-prefix states (:mod:`r2ec.llm.frozen_prefix`), built on first use; None when
        ``llm.frozen_prefix`` is off, every layer is adapted, or the check against a full forward failed."""
        if self._prefix is None:
            self._prefix = False
            from r2ec.llm.frozen_prefix import FrozenPrefix, first_adapted_layer
            h = self.host
            split = first_adapted_layer(h.policy)
            if h.p.llm.frozen_prefix and split > 0:
                t0 = time.perf_counter()
                # the states depend only on the untrained bottom layers: one build serves every run (the item
                # table stage builds it; on a CPU without fast bf16 a build is ~13 min at 1 thread)
                path = self.cache_path("frozen_prefix", split)
                states = FrozenPrefix.load_states(path, split) if path is not None else None
                model, ctx = h.infer()
                with ctx:
                    pf = FrozenPrefix(model, split, self.item_ids, h.answer_id, h.pad_id, self.batch_size,
                                      states=states)
                self._prefix = pf if pf.ok else False
                if pf.ok and states is None and path is not None and h.acc.is_main_process:
                    pf.save(path)
                log.info("frozen prefix of %d items below layer %d %s in %.1fs", len(self.item_ids), split,
                         "loaded" if states is not None else "built", time.perf_counter() - t0)
        return self._prefix or None

    def vectors(self, item_ids: list[int]) -> torch.Tensor:
        """Float32 ``[K, H]`` vectors of items ``item_ids`` by the policy, WITH grad (a training step's items)."""
        from r2ec.llm.encoder import hidden_at_answer
        h = self.host
        pf = self.prefix()
        if pf is not None:
            return pf.vectors(h.policy, [i - 1 for i in item_ids]).float()
        rows = [self.item_ids[i - 1] for i in item_ids]
        return hidden_at_answer(h.policy, rows, h.answer_id, h.pad_id, batch_size=len(rows)).float()

    def save(self, path: Path, meta: dict) -> None:
        from r2ec.llm.encoder import save_item_table
        if self.table is not None:
            save_item_table(path, self.table, {"step": self.step, **meta})

    def load(self, path: Path) -> dict:
        """Load a saved table (``best/item_table.pt``); returns its meta."""
        from r2ec.llm.encoder import load_item_table
        self.table, meta = load_item_table(path)
        return meta


def build_item_table(ds: Dataset, params: Params, cache_dir: Path, progress: bool = True) -> dict:
    """Encode every item with the untrained backbone into ``cache_dir/item_tables/`` and describe it.

    A fresh LoRA adapter is the identity, so this table is where every R2ec variant starts; building it once
    as its own pipeline stage keeps variants that run side by side from each encoding it again. Only the
    backbone + adapter are built (:class:`r2ec.model.host.ModelHost`): no trainer, optimizer or rollout engine.
    """
    from r2ec.model.host import ModelHost
    t0 = time.perf_counter()
    host = ModelHost(ds, params, params.recpo.seed, Path(cache_dir), progress)
    items = ItemTable(host, params.recpo.item_batch_size)
    items.refresh(0)
    return {"dataset": ds.name, "backbone": params.llm.backbone, "items": ds.n_items, "table": str(items.init_cache()),
            "seconds": round(time.perf_counter() - t0, 1)}
