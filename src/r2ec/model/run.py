"""Loading a trained (or zero-shot) R2ec run for scoring, without a trainer or an optimizer: the backbone + the
run's best adapter (``best/trainable.pt``), its readout / classification head, its item table (``best/item_table.pt``;
re-encoded, or read from the cache, when absent), the user encoder and the one scoring head. The latency table
times exactly what evaluation does through it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import polars as pl
import torch

from r2ec.config import Params
from r2ec.io import Dataset
from r2ec.model.head import RecHead, attach_heads
from r2ec.model.host import ModelHost
from r2ec.model.item_table import ItemTable
from r2ec.model.readout_fit import load_readout
from r2ec.model.users import UserEncoder, make_engine_for


class TrainedRun:
    """``run_dir``'s best state on a :class:`ModelHost`; :meth:`scorer` scores sample rows as evaluation does.

    ``var``: the R2ec variant (flags ``train``, ``reasoning``, ``cls_head``); ``rc``: its resolved training section
    (see :func:`r2ec.recpo.variants.resolve`)."""

    def __init__(self, var: Any, rc: Any, ds: Dataset, params: Params, run_dir: Path, cache_dir: Path | None):
        from r2ec.data.popularity import log_popularity_prior
        from r2ec.train.checkpoint import load_trainable_state
        heads: dict[str, Any] = {}

        def setup(model: torch.nn.Module, device: Any) -> None:
            heads["readout"], heads["cls"] = attach_heads(model, var, params.readout, rc, ds.n_items, device)

        self.host = ModelHost(ds, params, rc.seed, cache_dir, setup=setup)
        self.readout, self.cls = heads["readout"], heads["cls"]
        self.items = ItemTable(self.host, rc.item_batch_size, enabled=not var.cls_head)
        best = Path(run_dir) / "best"
        if var.train and (best / "trainable.pt").exists():
            load_trainable_state({"policy": self.host.policy}, torch.load(best / "trainable.pt", map_location="cpu"))
            self.host.stepped()
            load_readout(self.readout, best)
            if (best / "item_table.pt").exists():
                meta = self.items.load(best / "item_table.pt")
                self.host.step = self.items.step = int(meta.get("step", 0))
        self.items.refresh(self.host.step)
        w = float(rc.popularity_prior)
        prior = log_popularity_prior(ds.split("train"), ds.n_items, w) if w > 0 else None
        self.users = UserEncoder(self.host, rc, make_engine_for(self.host, rc), var.reasoning)
        self.head = RecHead(rc.tau, lambda: self.items.table, self.readout, self.cls, lambda: prior)

    def scorer(self, batch: pl.DataFrame) -> torch.Tensor:
        """``[B, N+1]`` scores of sample rows (user vectors as evaluation computes them, then the head)."""
        return self.head.scores(self.users.states(batch))


def load_run(method: str, var: Any, rc: Any, ds: Dataset, params: Params, run_dir: Path,
             cache_dir: Path | None) -> TrainedRun:
    """The run of R2ec variant ``method`` in ``run_dir`` (see :class:`TrainedRun`)."""
    return TrainedRun(var, rc, ds, params, run_dir, cache_dir)
