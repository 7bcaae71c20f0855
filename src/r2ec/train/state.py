"""A training run's state on disk: the checkpoint's fingerprint (what its validity depends on), saving and
restoring the whole training state (``last/``), the best step's files (``best/``) and resuming a killed run.
A mixin of :class:`r2ec.train.harness.LLMHarness`; it reads the harness's attributes (method, params, data,
optimizer, scheduler, accelerator, best-step bookkeeping)."""

from __future__ import annotations

import hashlib
import json
import logging
import math
import shutil
from typing import Any

import polars as pl
import torch

from r2ec.config import to_dict
from r2ec.errors import UserError
from r2ec.io import atomic_dir, read_jsonl, write_text
from r2ec.train.checkpoint import load_checkpoint, load_trainable_state, rng_state, set_rng_state, trainable_state
from r2ec.train.engine import engine_fingerprint, load_optimizer_state, sync_master_weights

log = logging.getLogger(__name__)


class RunState:
    def fingerprint(self) -> str:
        """Hash of everything a checkpoint's validity depends on (method, params, data)."""
        key = {"method": self.method, "llm": to_dict(self.p.llm), "lora": to_dict(self.p.lora),
               "train": to_dict(self.tc), "eval": to_dict(self.p.eval), "dataset": self.ds.name,
               "n_items": self.ds.n_items, "splits": {k: v.height for k, v in self.ds.splits.items()},
               **engine_fingerprint(self.acc), **self.fingerprint_extra()}
        return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()

    def state(self, opt_state: Any = None) -> dict[str, Any]:
        """The whole training state; ``opt_state`` from :func:`r2ec.train.engine.optimizer_state` (a collective
        under DeepSpeed, so taken on every rank before the main process calls this)."""
        return {"method": self.method, "fingerprint": self.fingerprint(), "step": self.step,
                "trainable": trainable_state(self.modules()),
                "optimizer": self.opt.state_dict() if opt_state is None else opt_state,
                "scheduler": self.sched.state_dict(), "rng": rng_state(),
                "best_score": self.best_score, "best_tie": self.best_tie, "best_step": self.best_step,
                "best_valid": self.best_valid,
                "bad_evals": self.bad_evals, "done": self.done, "train_s": self.train_s, **self.extra_state()}

    def restore(self, st: dict[str, Any]) -> None:
        if st.get("method") != self.method:
            raise UserError(f"{self.run_dir / 'last'}: checkpoint of method {st.get('method')!r}, not "
                             f"{self.method!r}; remove it to start over")
        load_trainable_state(self.modules(), st["trainable"])
        load_optimizer_state(self.acc, self.opt, st["optimizer"], str(self.run_dir / "last"))
        self.sched.load_state_dict(st["scheduler"])
        set_rng_state(st["rng"])
        self.step, self.best_score, self.best_step = st["step"], st["best_score"], st["best_step"]
        self.best_valid, self.bad_evals, self.done = st["best_valid"], st["bad_evals"], st["done"]
        self.train_s = float(st.get("train_s", 0.0))
        self.best_tie = float(st.get("best_tie", -math.inf))
        self.restore_extra(st)
        self.stepped()

    def save_best(self, valid: dict, ranks: pl.DataFrame) -> None:
        with atomic_dir(self.run_dir / "best") as tmp:
            self.policy.save_pretrained(tmp / "adapter")
            torch.save(trainable_state(self.modules()), tmp / "trainable.pt")
            self.save_best_extra(tmp)
            ranks.write_parquet(tmp / "valid_ranks.parquet")
            (tmp / "valid.json").write_text(json.dumps({"step": self.step, **valid}, indent=2))

    def load_best(self) -> tuple[dict, pl.DataFrame] | None:
        d = self.run_dir / "best"
        if not (d / "trainable.pt").exists():
            return None
        load_trainable_state(self.modules(), torch.load(d / "trainable.pt", map_location="cpu"))
        self.stepped()
        self.load_best_extra(d)
        valid = json.loads((d / "valid.json").read_text())
        valid.pop("step", None)
        return valid, pl.read_parquet(d / "valid_ranks.parquet")

    def _resume(self) -> dict[str, Any] | None:
        last = self.run_dir / "last"
        st = load_checkpoint(last)
        # every rank has read `last` before the main process may remove it below (a rank reading it after the
        # removal would take the fresh-start branch alone and pair its collectives with the wrong ones)
        self.acc.wait_for_everyone()
        if st is not None and st.get("fingerprint") != self.fingerprint():
            log.warning("%s holds a checkpoint of other params/data; starting over", last)
            if self.acc.is_main_process:
                for d in (last, self.run_dir / "best"):
                    shutil.rmtree(d, ignore_errors=True)
            self.acc.wait_for_everyone()
            st = None
        if st is not None:
            self.restore(st)  # every rank loads the same files (written by the main process)
            log.info("resumed %s from %s at step %d", self.method, last, self.step)
            # drop log lines written after the checkpoint by the interrupted run
            if self.acc.is_main_process:
                for name, keep in (("train_log.jsonl", lambda r: r.get("step", 0) < self.step),
                                   ("valid_log.jsonl", lambda r: r.get("step", 0) <= self.step)):
                    kept = [r for r in read_jsonl(self.run_dir / name) if keep(r)]
                    write_text(self.run_dir / name, "".join(json.dumps(r) + "\n" for r in kept))
        else:
            if self.acc.is_main_process:  # a fresh run: no stale logs of an earlier run
                for name in ("train_log.jsonl", "valid_log.jsonl"):
                    (self.run_dir / name).unlink(missing_ok=True)
            self.acc.wait_for_everyone()
            if self.on_fresh_start():
                self.validate()  # step 0 = the starting weights: training is selected against them
        # weights written after `prepare` (restore, warm start, readout fit) become ZeRO's master copies
        sync_master_weights(self.acc, self.model)
        self.acc.wait_for_everyone()  # no rank starts a step (or a checkpoint write) before all have resumed
        return st
