"""TIGER (Rajput et al., NeurIPS 2023): generative retrieval over semantic IDs.

Pipeline of one run (``train_tiger``):

1. item text -> content embedding (cached) -> RQ-VAE -> ``levels`` codes + a collision digit per item
   (:mod:`r2ec.baselines.tiger_semantic`); utilisation and collision statistics go to ``semantic_ids.json``;
2. a small T5 encoder-decoder reads the semantic-ID tokens of the history (optionally after one hashed user
   token) and is trained with teacher forcing to emit the target's codes (cross-entropy over the 4 digits);
3. decoding is an exact, batched, trie-constrained beam search over the code steps (:func:`beam_search`):
   at every step each beam may only continue with a code that leads to at least one real item (and, with
   ``tiger.exclude_history``, to an item the evaluator will not mask anyway), log-probabilities accumulate,
   the best ``tiger.beam`` continuations survive. The scorer gives the beam items their sequence log-probs
   (descending in beam order) and every other item -inf, so the shared evaluator ranks them after all beam
   items (ties against the target).

Training is seeded, validated on valid N@10 (a seeded subsample of ``tiger.valid_max_samples``) after every
"epoch" of ``tiger.epoch_samples`` training samples, stops early after ``tiger.patience`` epochs without
improvement, keeps the best weights in ``checkpoint.pt`` and the whole state in ``last.pt`` so that a killed
run continues where it stopped (same weights and metrics as an uninterrupted run).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from r2ec.baselines import tiger_semantic as S
from r2ec.baselines.tiger_model import (EOS, FIRST_CODE_TOKEN, PAD, Inputs, Trie, Vocab, _autocast,  # noqa: F401
                                       _exclusions, beam_search, build_t5, make_scorer, sequence_logprobs)
from r2ec.baselines.seqtrain import (CHECKPOINT, LAST, LOG, SELECT_METRIC, _rng_state, _save,
                                    resume_state, validate_epoch)
from r2ec.config import EvalCfg, TigerCfg, to_dict
from r2ec.errors import UserError
from r2ec.eval import Scorer, evaluate, write_run_outputs
from r2ec.io import Dataset, append_jsonl, write_json
from r2ec.llm.backbone import uses_bf16
from r2ec.seeding import seed_all

log = logging.getLogger("r2ec.tiger")

METHOD = "tiger"
SEMANTIC_IDS = "semantic_ids.json"
RQVAE_WEIGHTS = "rqvae.pt"
# fields that may differ between an interrupted run and its continuation
_RESUMABLE_CHANGES = {"epochs", "patience", "threads", "beam_batch_size"}
_RQ_FIELDS = ("encoder", "text_max_tokens", "rqvae_hidden", "rqvae_latent", "rqvae_levels", "codebook_size",
              "commitment", "rqvae_epochs", "rqvae_batch_size", "rqvae_lr", "kmeans_iters", "seed")




# ----------------------------------------------------------------------------------------------------------
# semantic IDs of a dataset (embeddings + RQ-VAE), reused on resume

def _rq_kwargs(cfg: TigerCfg) -> dict:
    return dict(hidden=tuple(cfg.rqvae_hidden), latent=cfg.rqvae_latent, levels=cfg.rqvae_levels,
                codebook_size=cfg.codebook_size, commitment=cfg.commitment, epochs=cfg.rqvae_epochs,
                batch_size=cfg.rqvae_batch_size, lr=cfg.rqvae_lr, kmeans_iters=cfg.kmeans_iters, seed=cfg.seed)


def build_semantic_ids(ds: Dataset, cfg: TigerCfg, run_dir: Path, cache_dir: str | Path,
                       progress: bool = False) -> dict:
    """Embeddings (cached) -> RQ-VAE -> semantic IDs; written to ``run_dir/semantic_ids.json`` with their
    statistics and reused from there when the same settings produced them before."""
    emb, emb_info = S.item_embeddings(ds.items, cfg.encoder, cache_dir, cfg.embed_batch_size, cfg.text_max_tokens,
                                      progress)
    fingerprint = {"dataset": ds.name, "n_items": ds.n_items, "embeddings": Path(emb_info["cache"]).name,
                   **{k: v for k, v in dataclasses.asdict(cfg).items() if k in _RQ_FIELDS}}
    fingerprint = json.loads(json.dumps(fingerprint))
    f = run_dir / SEMANTIC_IDS
    if f.exists():
        saved = json.loads(f.read_text())
        if saved.get("fingerprint") == fingerprint:
            return saved
    model, summary = S.train_rqvae(emb, **_rq_kwargs(cfg), progress=progress)
    codes = model.encode(torch.as_tensor(emb)).numpy()
    stats = S.code_stats(codes, cfg.codebook_size)
    sem = S.semantic_ids(codes)
    stats["dedup_digit_size"] = int(sem[:, -1].max()) + 1
    _save(run_dir / RQVAE_WEIGHTS, model.state_dict())
    out = {"fingerprint": fingerprint, "stats": stats, "rqvae": summary,
           "embeddings": emb_info,
           "level_sizes": [cfg.codebook_size] * cfg.rqvae_levels + [stats["dedup_digit_size"]],
           "codes": sem.tolist()}
    write_json(f, out)
    log.info("tiger semantic IDs of %s: utilisation per level %s, collision rate %.4f (%d of %d items share a "
             "code; max %d per code), recon %.4f -> %.4f", ds.name,
             [round(u, 3) for u in stats["utilisation_per_level"]], stats["collision_rate"],
             round(stats["collision_rate"] * stats["n_items"]), stats["n_items"], stats["max_items_per_code"],
             summary["recon_init"], summary["recon_final"])
    return out


# ----------------------------------------------------------------------------------------------------------
# training

def _check(cfg: TigerCfg, eval_cfg: EvalCfg) -> None:
    if cfg.beam < max(eval_cfg.ks):
        raise UserError(f"tiger.beam: {cfg.beam} is below the largest cut-off eval.ks = {max(eval_cfg.ks)}; "
                        f"items outside the beam cannot be ranked")


def _max_history(ds: Dataset, cfg: TigerCfg) -> int:
    widths = [int(df["history_item_ids"].list.len().max() or 0) for df in ds.splits.values() if df.height]
    longest = max([1, *widths])
    return min(longest, cfg.max_history) if cfg.max_history > 0 else longest


def _excludes_history(cfg: TigerCfg, eval_cfg: EvalCfg | None) -> bool:
    """Beams skip history items only where the evaluator masks them for sure: history masked, and a target
    that repeats a history item masked too (else such a target must stay reachable)."""
    if eval_cfg is None:
        return cfg.exclude_history
    return cfg.exclude_history and eval_cfg.mask_history and eval_cfg.mask_repeated_target


def load_scorer(ds: Dataset, run_dir: str | Path, eval_cfg: EvalCfg | None = None) -> Scorer:
    """Scorer of the best model saved in ``run_dir/checkpoint.pt``."""
    ck = torch.load(Path(run_dir) / CHECKPOINT, map_location="cpu", weights_only=False)
    if ck.get("method") != METHOD:
        raise UserError(f"{run_dir}: checkpoint holds {ck.get('method')!r}, not {METHOD!r}")
    if ck["n_items"] != ds.n_items:
        raise UserError(f"{run_dir}: checkpoint has {ck['n_items']} items, dataset {ds.name} has {ds.n_items}")
    known = {f.name for f in dataclasses.fields(TigerCfg)}
    cfg = TigerCfg(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in ck["cfg"].items() if k in known})
    vocab = Vocab(ck["codes"], ck["level_sizes"], cfg.user_buckets)
    model = build_t5(vocab.size, cfg)
    model.load_state_dict(ck["model"])
    model.eval()
    exclude = _excludes_history(cfg, eval_cfg)
    return make_scorer(model, vocab, Trie(vocab.codes, vocab.sizes), Inputs(vocab, ck["max_history"]), cfg.beam,
                       cfg.beam_batch_size, exclude, uses_bf16(cfg.autocast))


def _next_chunk(state: dict, n: int, size: int, gen: torch.Generator) -> torch.Tensor:
    """The next ``size`` sample indices of an endless stream of seeded permutations (position kept in state)."""
    parts, need = [], size
    while need > 0:
        if state["cursor"] >= len(state["perm"]):
            state["perm"], state["cursor"] = torch.randperm(n, generator=gen), 0
        take = min(need, len(state["perm"]) - state["cursor"])
        parts.append(state["perm"][state["cursor"]:state["cursor"] + take])
        state["cursor"] += take
        need -= take
    return torch.cat(parts)


def _train_chunk(model, opt, ids: torch.Tensor, labels: torch.Tensor, order: torch.Tensor, cfg: TigerCfg,
                 progress: bool, desc: str) -> float:
    model.train()
    total, count = 0.0, 0
    for start in tqdm(range(0, len(order), cfg.batch_size), desc=desc, disable=not progress, leave=False):
        idx = order[start:start + cfg.batch_size]
        x = ids[idx]
        width = int((x != PAD).sum(1).max())  # right-padded: drop all-pad columns of this batch
        x = x[:, :max(width, 1)]
        y = labels[idx]
        dec_in = torch.cat([torch.full((len(idx), 1), model.config.decoder_start_token_id), y[:, :-1]], dim=1)
        with _autocast(uses_bf16(cfg.autocast)):  # teacher forcing: the decoder reads the shifted target codes
            logits = model(input_ids=x, attention_mask=x != PAD, decoder_input_ids=dec_in).logits
        loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), y.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        total += loss.item() * len(idx)
        count += len(idx)
    return total / max(count, 1)


def train_tiger(ds: Dataset, cfg: TigerCfg, eval_cfg: EvalCfg, run_dir: str | Path,
                cache_dir: str | Path = "results/cache", progress: bool = True, config: dict | None = None) -> dict:
    """Train TIGER on ``ds``, select on valid N@10, evaluate valid + test; resumable.

    Writes ``semantic_ids.json`` (codes and their statistics), ``rqvae.pt``, ``checkpoint.pt`` (best T5),
    ``last.pt`` (resume state), ``train_log.jsonl`` and, through :func:`r2ec.eval.write_run_outputs`,
    ``metrics.json``, ``ranks.parquet`` and ``config.json``. Item embeddings are cached under
    ``cache_dir/tiger/embeddings``. Returns ``{"valid": metrics, "test": metrics}``.
    """
    t_start, c_start = time.perf_counter(), time.process_time()
    _check(cfg, eval_cfg)
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    # beam search is too dear for every valid sample after every epoch: a seeded valid subsample of our own size
    eval_cfg = dataclasses.replace(eval_cfg, valid_max_samples=cfg.valid_max_samples)
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    cfg_dict = dataclasses.asdict(cfg)
    train = ds.split("train")
    if train.height == 0:
        raise UserError(f"{ds.name}: empty training split")

    t0 = time.perf_counter()
    sem = build_semantic_ids(ds, cfg, run_dir, cache_dir, progress)
    t_semantic = time.perf_counter() - t0
    vocab = Vocab(np.asarray(sem["codes"], dtype=np.int64), sem["level_sizes"], cfg.user_buckets)
    trie = Trie(vocab.codes, vocab.sizes)
    inputs = Inputs(vocab, _max_history(ds, cfg))
    ids, _ = inputs(train)
    targets = torch.as_tensor(train["target_item_id"].to_numpy().copy(), dtype=torch.long)
    if int(targets.min()) < 1 or int(targets.max()) > ds.n_items:
        raise UserError(f"{ds.name}: train target ids outside 1..{ds.n_items}")
    labels = vocab.item_tokens[targets]

    seed_all(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    model = build_t5(vocab.size, cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    codes_hash = hashlib.sha256(vocab.codes.numpy().tobytes()).hexdigest()[:16]
    fingerprint = {"method": METHOD, "dataset": ds.name, "n_items": ds.n_items, "n_train": train.height,
                   "max_history": inputs.max_history, "codes": codes_hash}
    state: dict[str, Any] = {"epoch": 0, "best": float("-inf"), "best_epoch": 0, "bad_epochs": 0,
                             "stopped": False, "log": [], "perm": torch.zeros(0, dtype=torch.long), "cursor": 0}

    state = resume_state(run_dir, fingerprint, cfg_dict, _RESUMABLE_CHANGES, model, opt, gen) or state
    state["stopped"] = 0 < cfg.patience <= state["bad_epochs"]

    ckpt_meta = {"method": METHOD, "cfg": cfg_dict, "n_items": ds.n_items, "codes": vocab.codes,
                 "level_sizes": list(vocab.sizes), "max_history": inputs.max_history}
    exclude = _excludes_history(cfg, eval_cfg)
    scorer = make_scorer(model, vocab, trie, inputs, cfg.beam, cfg.beam_batch_size, exclude, uses_bf16(cfg.autocast))
    per_epoch = min(cfg.epoch_samples, train.height) if cfg.epoch_samples > 0 else train.height
    bar = tqdm(total=cfg.epochs, initial=min(state["epoch"], cfg.epochs), desc="tiger epochs", disable=not progress)
    while state["epoch"] < cfg.epochs and not state["stopped"]:
        epoch = state["epoch"] + 1
        t0, c0 = time.perf_counter(), time.process_time()
        order = _next_chunk(state, train.height, per_epoch, gen)
        loss = _train_chunk(model, opt, ids, labels, order, cfg, progress, f"tiger epoch {epoch}")
        t_train = time.perf_counter() - t0
        valid = validate_epoch(scorer, ds, eval_cfg, state, epoch, cfg.patience, run_dir / CHECKPOINT,
                               {**ckpt_meta, "epoch": epoch}, model)
        score = valid[SELECT_METRIC]
        record = {"epoch": epoch, "loss": loss, **{f"valid_{k}": v for k, v in valid.items()},
                  "best_epoch": state["best_epoch"], "train_samples": len(order),
                  "train_seconds": round(t_train, 3), "seconds": round(time.perf_counter() - t0, 3),
                  "cpu_seconds": round(time.process_time() - c0, 3)}
        state["log"].append(record)
        _save(run_dir / LAST, {"fingerprint": fingerprint, "cfg": cfg_dict, "model": model.state_dict(),
                          "optimizer": opt.state_dict(), "rng": _rng_state(gen), "state": state})
        append_jsonl(run_dir / LOG, record)
        log.info("tiger epoch %d: loss %.4f valid %s %.4f (best epoch %d, %.0fs)", epoch, loss, SELECT_METRIC,
                 score, state["best_epoch"], record["seconds"])
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.4f}", **{SELECT_METRIC: f"{score:.4f}"}, best=state["best_epoch"])
    bar.close()

    best_scorer = load_scorer(ds, run_dir, eval_cfg)
    metrics, ranks = {}, []
    t0 = time.perf_counter()
    for split in ("valid", "test"):
        m, r = evaluate(best_scorer, ds, split, eval_cfg, progress=progress, desc=f"tiger {split}")
        metrics[split] = m
        ranks.append(r)
    write_run_outputs(run_dir, metrics, ranks, config if config is not None else {METHOD: cfg_dict})
    timing = {"semantic_ids_seconds": round(t_semantic, 2), "final_eval_seconds": round(time.perf_counter() - t0, 2),
              "total_seconds": round(time.perf_counter() - t_start, 2),
              "total_cpu_seconds": round(time.process_time() - c_start, 2)}
    write_json(run_dir / "timing.json", timing)
    log.info("tiger on %s: %s", ds.name, timing)
    return metrics


# the method registry's uniform entries (r2ec.methods)
def train_method(method: str, ds: Dataset, params, run_dir: Path, cache_dir: Path, progress: bool) -> dict:
    return train_tiger(ds, params.tiger, params.eval, run_dir, cache_dir, progress, config=to_dict(params))


def run_scorer(method: str, run_dir: Path, ds: Dataset, params, cache_dir: Path) -> Scorer:
    return load_scorer(ds, run_dir, params.eval)
