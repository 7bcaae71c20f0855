"""The shared trainer of the classic sequential recommenders (SASRec, GRU4Rec, Caser).

Every train sample (history of up to ``history_len`` items -> target) is one example; histories are
left-padded once into a tensor. The model maps a history to a vector ``u``; logits are ``u @ E[1:].T`` over
all real items (the pad item 0 is never a class) and the loss is full-softmax cross-entropy.

Adam, seeded (``random``, ``numpy``, ``torch`` from ``cfg.seed``; the data order comes from its own
``torch.Generator``), validation on ``valid`` N@10 through the shared evaluator after every epoch, early
stopping with ``cfg.patience``, best weights in ``checkpoint.pt``. After every epoch ``last.pt`` holds the
whole training state (model, optimizer, epoch, best score, patience counter, all RNG states, the log), so a
killed run started again with the same arguments continues where it stopped and ends with the same weights
and metrics as an uninterrupted run.
"""

from __future__ import annotations

import dataclasses
import json
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from r2ec.config import EvalCfg, SeqModelCfg, to_dict
from r2ec.errors import UserError
from r2ec.eval import Scorer, evaluate, write_run_outputs
from r2ec.io import Dataset, append_jsonl, atomic_path, pad_histories, write_text
from r2ec.seeding import seed_all

METHODS = ("sasrec", "gru4rec", "caser")
SELECT_METRIC = "N@10"
CHECKPOINT = "checkpoint.pt"
LAST = "last.pt"
LOG = "train_log.jsonl"
# fields that may differ between an interrupted run and its continuation
_RESUMABLE_CHANGES = {"epochs", "patience", "threads"}


# ----------------------------------------------------------------------------------------------------------
# models and inputs

def build_model(method: str, n_items: int, n_users: int, max_len: int, cfg: SeqModelCfg) -> nn.Module:
    """A fresh model of ``method`` (weights drawn from torch's global RNG)."""
    if method == "sasrec":
        from r2ec.baselines.sasrec import SASRec
        return SASRec(n_items, max_len, cfg.hidden, cfg.layers, cfg.heads, cfg.dropout)
    if method == "gru4rec":
        from r2ec.baselines.gru4rec import GRU4Rec
        return GRU4Rec(n_items, cfg.hidden, cfg.layers, cfg.dropout)
    if method == "caser":
        from r2ec.baselines.caser import Caser
        return Caser(n_items, n_users, max_len, cfg.hidden, cfg.n_v, cfg.n_h, cfg.dropout)
    raise UserError(f"unknown classic method {method!r}; known: {', '.join(METHODS)}")


def history_width(ds: Dataset) -> int:
    """Model input width L: the longest history in any split (= ``data.history_len`` on real data)."""
    widths = [int(df["history_item_ids"].list.len().max() or 0) for df in ds.splits.values() if df.height]
    return max([1, *widths])


def user_vocab(ds: Dataset) -> list[str]:
    """Users of the training split, sorted; user ``users[i]`` has index ``i + 1`` (0 = unknown)."""
    return sorted(ds.split("train")["user_id"].unique().to_list())


class Inputs:
    """Turns sample rows into model inputs: left-padded histories and user indices."""

    def __init__(self, max_len: int, users: list[str]):
        self.max_len = max_len
        self.users = users
        self._user_frame = pl.DataFrame({"user_id": users, "_u": np.arange(1, len(users) + 1, dtype=np.int64)})

    def __call__(self, df: pl.DataFrame) -> tuple[torch.Tensor, torch.Tensor]:
        hist = pad_histories(df["history_item_ids"].to_list(), self.max_len, left=True)
        u = (df.select("user_id").join(self._user_frame, on="user_id", how="left", maintain_order="left")["_u"]
             .fill_null(0).to_numpy().copy())
        return hist, torch.as_tensor(u, dtype=torch.long)


def item_logits(model: nn.Module, hist: torch.Tensor, users: torch.Tensor) -> torch.Tensor:
    """``[B, N]`` logits over the real items 1..N (column j is item j + 1)."""
    return model(hist, users) @ model.item_emb.weight[1:].T


def make_scorer(model: nn.Module, inputs: Inputs) -> Scorer:
    """A :data:`r2ec.eval.Scorer` for ``model``: ``[B, N + 1]`` scores, column 0 (no item) = -inf."""

    def score(batch: pl.DataFrame) -> torch.Tensor:
        model.eval()
        hist, users = inputs(batch)
        with torch.no_grad():
            s = item_logits(model, hist, users)
        return torch.cat([torch.full((s.shape[0], 1), float("-inf")), s], dim=1)

    return score


def load_scorer(method: str, ds: Dataset, run_dir: str | Path) -> Scorer:
    """Scorer of the best model saved in ``run_dir/checkpoint.pt``."""
    ck = torch.load(Path(run_dir) / CHECKPOINT, map_location="cpu", weights_only=False)
    if ck["method"] != method:
        raise UserError(f"{run_dir}: checkpoint holds {ck['method']!r}, not {method!r}")
    if ck["n_items"] != ds.n_items:
        raise UserError(f"{run_dir}: checkpoint has {ck['n_items']} items, dataset {ds.name} has {ds.n_items}")
    known = {f.name for f in dataclasses.fields(SeqModelCfg)}
    cfg = SeqModelCfg(**{k: v for k, v in ck["cfg"].items() if k in known})
    model = build_model(method, ck["n_items"], len(ck["users"]), ck["max_len"], cfg)
    model.load_state_dict(ck["model"])
    model.eval()
    return make_scorer(model, Inputs(ck["max_len"], ck["users"]))


# ----------------------------------------------------------------------------------------------------------
# training

def _rng_state(gen: torch.Generator) -> dict:
    return {"torch": torch.get_rng_state(), "gen": gen.get_state(), "numpy": np.random.get_state(),
            "python": random.getstate()}


def validate_epoch(scorer, ds, eval_cfg, state: dict, epoch: int, patience: int, best_file: Path, meta: dict,
                   model: nn.Module) -> dict:
    """Valid metrics of ``epoch`` through the shared evaluator, recorded by :func:`end_epoch` on ``SELECT_METRIC``."""
    valid, _ = evaluate(scorer, ds, "valid", eval_cfg, progress=False)
    end_epoch(state, epoch, valid[SELECT_METRIC], patience, best_file, meta, model)
    return valid


def end_epoch(state: dict, epoch: int, score: float, patience: int, best_file: Path, meta: dict,
              model: nn.Module) -> None:
    """Best-score / patience bookkeeping after an epoch's validation: on improvement (or the first epoch) the
    model is saved to ``best_file`` with ``meta``; ``state["stopped"]`` once ``patience`` epochs passed
    without one (0 = never)."""
    if state["best_epoch"] == 0 or score > state["best"]:
        state.update(best=score, best_epoch=epoch, bad_epochs=0)
        _save(best_file, {**meta, "model": model.state_dict()})
    else:
        state["bad_epochs"] += 1
    state["epoch"] = epoch
    state["stopped"] = 0 < patience <= state["bad_epochs"]


def resume_state(run_dir: Path, fingerprint: dict, cfg_dict: dict, resumable: set[str], model: nn.Module,
                 opt: torch.optim.Optimizer, gen: torch.Generator) -> dict | None:
    """Restore model, optimizer and RNGs from ``run_dir/last.pt`` and return its loop state (None: no file,
    and the log of an earlier run is removed). A file of other data or of other params (except the keys in
    ``resumable``) is an error naming it. The log is part of the state and is rewritten from it, so a kill
    between ``last.pt`` and a log append leaves no gap."""
    last_file = run_dir / LAST
    if not last_file.exists():
        (run_dir / LOG).unlink(missing_ok=True)
        return None
    last = torch.load(last_file, map_location="cpu", weights_only=False)
    if last["fingerprint"] != fingerprint:
        raise UserError(f"{last_file}: saved for {last['fingerprint']}, not {fingerprint}; "
                        f"delete {run_dir} to start afresh")
    diff = {k for k in cfg_dict if last["cfg"].get(k) != cfg_dict[k]} - resumable
    if diff:
        raise UserError(f"{last_file}: saved with different {', '.join(sorted(diff))}; "
                        f"delete {run_dir} to start afresh")
    model.load_state_dict(last["model"])
    opt.load_state_dict(last["optimizer"])
    _set_rng_state(last["rng"], gen)
    write_text(run_dir / LOG, "".join(json.dumps(r) + "\n" for r in last["state"]["log"]))
    return last["state"]


def _set_rng_state(st: dict, gen: torch.Generator) -> None:
    torch.set_rng_state(st["torch"])
    gen.set_state(st["gen"])
    np.random.set_state(st["numpy"])
    random.setstate(st["python"])


def _save(path: Path, obj: Any) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def _train_epoch(model: nn.Module, opt: torch.optim.Optimizer, hist: torch.Tensor, users: torch.Tensor,
                 targets: torch.Tensor, batch_size: int, gen: torch.Generator, progress: bool, desc: str) -> float:
    model.train()
    order = torch.randperm(hist.shape[0], generator=gen)
    total, count = 0.0, 0
    for start in tqdm(range(0, len(order), batch_size), desc=desc, disable=not progress, leave=False):
        idx = order[start:start + batch_size]
        logits = item_logits(model, hist[idx], users[idx])
        loss = F.cross_entropy(logits, targets[idx] - 1)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        total += loss.item() * len(idx)
        count += len(idx)
    return total / max(count, 1)


def train_classic(method: str, ds: Dataset, cfg: SeqModelCfg, eval_cfg: EvalCfg, run_dir: str | Path,
                  progress: bool = True, config: dict | None = None) -> dict:
    """Train ``method`` on ``ds``, select on valid N@10, evaluate valid + test; resumable.

    Writes ``checkpoint.pt`` (best weights), ``last.pt`` (resume state), ``train_log.jsonl`` (one line per
    epoch) and, through :func:`r2ec.eval.write_run_outputs`, ``metrics.json``, ``ranks.parquet`` and
    ``config.json`` (``config``, the resolved params; defaults to this model's section). Returns
    ``{"valid": metrics, "test": metrics}``. If ``run_dir/last.pt`` exists the run continues from it; its
    settings must match ``cfg`` except ``epochs``, ``patience`` and ``threads``.
    """
    if method not in METHODS:
        raise UserError(f"unknown classic method {method!r}; known: {', '.join(METHODS)}")
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    # eval.valid_max_samples exists to make LLM validation affordable; selecting these cheap models on a small
    # subsample would only add noise, so they validate on every valid sample (test still uses the shared one)
    eval_cfg = dataclasses.replace(eval_cfg, valid_max_samples=0)
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    cfg_dict = dataclasses.asdict(cfg)

    max_len = history_width(ds)
    users = user_vocab(ds)
    inputs = Inputs(max_len, users)
    train = ds.split("train")
    if train.height == 0:
        raise UserError(f"{ds.name}: empty training split")
    hist, user_idx = inputs(train)
    targets = torch.as_tensor(train["target_item_id"].to_numpy().copy(), dtype=torch.long)
    if int(targets.min()) < 1 or int(targets.max()) > ds.n_items:
        raise UserError(f"{ds.name}: train target ids outside 1..{ds.n_items}")

    seed_all(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    model = build_model(method, ds.n_items, len(users), max_len, cfg)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    fingerprint = {"method": method, "dataset": ds.name, "n_items": ds.n_items, "n_train": train.height,
                   "max_len": max_len}
    state = {"epoch": 0, "best": float("-inf"), "best_epoch": 0, "bad_epochs": 0, "stopped": False, "log": []}

    state = resume_state(run_dir, fingerprint, cfg_dict, _RESUMABLE_CHANGES, model, opt, gen) or state
    # patience may have changed on resume: an early stop only sticks while it still holds
    state["stopped"] = 0 < cfg.patience <= state["bad_epochs"]

    ckpt_meta = {"method": method, "cfg": cfg_dict, "n_items": ds.n_items, "max_len": max_len, "users": users}
    scorer = make_scorer(model, inputs)
    bar = tqdm(total=cfg.epochs, initial=min(state["epoch"], cfg.epochs), desc=f"{method} epochs",
               disable=not progress)
    while state["epoch"] < cfg.epochs and not state["stopped"]:
        epoch = state["epoch"] + 1
        t0 = time.perf_counter()
        loss = _train_epoch(model, opt, hist, user_idx, targets, cfg.batch_size, gen, progress,
                            f"{method} epoch {epoch}")
        t_train = time.perf_counter() - t0
        valid = validate_epoch(scorer, ds, eval_cfg, state, epoch, cfg.patience, run_dir / CHECKPOINT,
                               {**ckpt_meta, "epoch": epoch}, model)
        score = valid[SELECT_METRIC]
        record = {"epoch": epoch, "loss": loss, **{f"valid_{k}": v for k, v in valid.items()},
                  "best_epoch": state["best_epoch"], "train_seconds": round(t_train, 3),
                  "seconds": round(time.perf_counter() - t0, 3)}
        state["log"].append(record)
        _save(run_dir / LAST, {"fingerprint": fingerprint, "cfg": cfg_dict, "model": model.state_dict(),
                          "optimizer": opt.state_dict(), "rng": _rng_state(gen), "state": state})
        append_jsonl(run_dir / LOG, record)
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.4f}", **{SELECT_METRIC: f"{score:.4f}"}, best=state["best_epoch"])
    bar.close()

    best_scorer = load_scorer(method, ds, run_dir)
    metrics, ranks = {}, []
    for split in ("valid", "test"):
        m, r = evaluate(best_scorer, ds, split, eval_cfg, progress=progress, desc=f"{method} {split}")
        metrics[split] = m
        ranks.append(r)
    write_run_outputs(run_dir, metrics, ranks, config if config is not None else {method: cfg_dict})
    return metrics


# the method registry's uniform entries (r2ec.methods)
def train_method(method: str, ds: Dataset, params, run_dir: Path, cache_dir: Path, progress: bool) -> dict:
    return train_classic(method, ds, getattr(params, method), params.eval, run_dir, progress, config=to_dict(params))


def run_scorer(method: str, run_dir: Path, ds: Dataset, params, cache_dir: Path) -> Scorer:
    return load_scorer(method, ds, run_dir)
