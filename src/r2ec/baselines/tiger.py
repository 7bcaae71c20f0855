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

import contextlib
import dataclasses
import hashlib
import json
import logging
import time
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from r2ec.baselines import tiger_semantic as S
from r2ec.baselines.seqtrain import (CHECKPOINT, LAST, LOG, SELECT_METRIC, _rng_state, _save,
                                    resume_state, validate_epoch)
from r2ec.config import EvalCfg, TigerCfg
from r2ec.errors import UserError
from r2ec.eval import Scorer, evaluate, write_run_outputs
from r2ec.io import Dataset, append_jsonl, pad_histories, write_json
from r2ec.llm.backbone import uses_bf16
from r2ec.seeding import seed_all

log = logging.getLogger("r2ec.tiger")

METHOD = "tiger"
SEMANTIC_IDS = "semantic_ids.json"
RQVAE_WEIGHTS = "rqvae.pt"
PAD, EOS = 0, 1  # token 0 pads the encoder input and starts the decoder; 1 is reserved (T5 wants an EOS id)
FIRST_CODE_TOKEN = 2
# fields that may differ between an interrupted run and its continuation
_RESUMABLE_CHANGES = {"epochs", "patience", "threads", "beam_batch_size"}
_RQ_FIELDS = ("encoder", "text_max_tokens", "rqvae_hidden", "rqvae_latent", "rqvae_levels", "codebook_size",
              "commitment", "rqvae_epochs", "rqvae_batch_size", "rqvae_lr", "kmeans_iters", "seed")


# ----------------------------------------------------------------------------------------------------------
# vocabulary and trie

class Vocab:
    """Token layout: 0 pad/start, 1 reserved, then one block of ids per code level, then user buckets."""

    def __init__(self, codes: np.ndarray | torch.Tensor, level_sizes: tuple[int, ...] | list[int],
                 user_buckets: int = 0):
        self.codes = torch.as_tensor(np.asarray(codes), dtype=torch.long)  # [N, L]; row i = item i + 1
        self.sizes = tuple(int(s) for s in level_sizes)
        if self.codes.dim() != 2 or self.codes.shape[1] != len(self.sizes):
            raise ValueError(f"codes of shape {tuple(self.codes.shape)} for {len(self.sizes)} levels")
        if self.codes.numel() and (int(self.codes.min()) < 0 or
                                   any(int(self.codes[:, t].max()) >= s for t, s in enumerate(self.sizes))):
            raise ValueError("a code lies outside its level's vocabulary")
        self.offsets = tuple(FIRST_CODE_TOKEN + sum(self.sizes[:t]) for t in range(len(self.sizes)))
        self.user_offset = FIRST_CODE_TOKEN + sum(self.sizes)
        self.user_buckets = int(user_buckets)
        self.size = self.user_offset + self.user_buckets
        offs = torch.tensor(self.offsets, dtype=torch.long)
        # [N + 1, L] token ids per item; row 0 (no item) is all pad
        self.item_tokens = torch.cat([torch.zeros(1, len(self.sizes), dtype=torch.long), self.codes + offs])

    @property
    def levels(self) -> int:
        return len(self.sizes)

    @property
    def n_items(self) -> int:
        return self.codes.shape[0]

    def user_token(self, user_id: str) -> int:
        """Hashed user token (a stable hash: crc32, not Python's salted ``hash``)."""
        return self.user_offset + zlib.crc32(str(user_id).encode("utf-8")) % self.user_buckets


class Trie:
    """The valid code sequences as dense per-level tables.

    ``prefix[t]`` [N]: id of each item's length-t prefix (0 for the empty prefix); ``count[t]``
    [n_prefixes_t, V_t]: items under (prefix, next code); ``child[t]``: the id of the extended prefix, and at
    the last level the item id (1-based); -1 where no item continues.
    """

    def __init__(self, codes: torch.Tensor, sizes: tuple[int, ...]):
        n, levels = codes.shape
        self.levels = levels
        self.prefix: list[torch.Tensor] = []
        self.count: list[torch.Tensor] = []
        self.child: list[torch.Tensor] = []
        pid = torch.zeros(n, dtype=torch.long)
        n_pref = 1
        for t in range(levels):
            self.prefix.append(pid)
            count = torch.zeros(n_pref, sizes[t], dtype=torch.long)
            count.index_put_((pid, codes[:, t]), torch.ones(n, dtype=torch.long), accumulate=True)
            if t + 1 < levels:
                uniq, nxt = torch.unique(codes[:, :t + 1], dim=0, return_inverse=True)
                n_next = uniq.shape[0]
            else:
                nxt, n_next = torch.arange(1, n + 1), n
            child = torch.full((n_pref, sizes[t]), -1, dtype=torch.long)
            child[pid, codes[:, t]] = nxt
            self.count.append(count)
            self.child.append(child)
            pid, n_pref = nxt.view(-1), n_next
        if n and int(self.count[-1].max()) > 1:
            raise ValueError("semantic IDs are not unique: two items share a full code")


# ----------------------------------------------------------------------------------------------------------
# model inputs and the T5

class Inputs:
    """Sample rows -> T5 encoder input: ``[user token] + codes of the last ``max_history`` items``, right-padded."""

    def __init__(self, vocab: Vocab, max_history: int):
        self.vocab = vocab
        self.max_history = max_history

    @property
    def width(self) -> int:
        return (1 if self.vocab.user_buckets else 0) + self.max_history * self.vocab.levels

    def __call__(self, df: pl.DataFrame) -> tuple[torch.Tensor, torch.Tensor]:
        hist = pad_histories(df["history_item_ids"].to_list(), self.max_history, left=False)
        ids = self.vocab.item_tokens[hist].view(hist.shape[0], -1)  # [B, H * L], pad items -> pad tokens
        if self.vocab.user_buckets:
            users = torch.tensor([self.vocab.user_token(u) for u in df["user_id"].to_list()], dtype=torch.long)
            ids = torch.cat([users.view(-1, 1), ids], dim=1)
        return ids, ids != PAD


def build_t5(vocab_size: int, cfg: TigerCfg):
    """A freshly initialised T5 encoder-decoder (weights from torch's global RNG)."""
    from transformers import T5Config, T5ForConditionalGeneration
    config = T5Config(vocab_size=vocab_size, d_model=cfg.hidden, d_kv=cfg.d_kv, d_ff=cfg.d_ff,
                      num_layers=cfg.encoder_layers, num_decoder_layers=cfg.decoder_layers, num_heads=cfg.heads,
                      dropout_rate=cfg.dropout, feed_forward_proj="relu", pad_token_id=PAD, eos_token_id=EOS,
                      decoder_start_token_id=PAD, use_cache=True)
    return T5ForConditionalGeneration(config)


def sequence_logprobs(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, vocab: Vocab,
                      items: torch.Tensor) -> torch.Tensor:
    """Teacher-forced log-probability of each candidate item's code sequence: ``[B, M]`` for ``items [B, M]``
    (the brute-force reference of :func:`beam_search`)."""
    b, m = items.shape
    labels = vocab.item_tokens[items.reshape(-1)]
    rows = torch.arange(b).repeat_interleave(m)
    out = model(input_ids=input_ids[rows], attention_mask=attention_mask[rows], labels=labels)
    logp = out.logits.float().log_softmax(-1).gather(-1, labels.unsqueeze(-1)).squeeze(-1)
    return logp.sum(-1).view(b, m)


def _autocast(enabled: bool):
    """bf16 autocast of the T5's matmuls on CPU (AMX / AVX512-BF16 make them ~2x faster), or nothing."""
    return torch.autocast("cpu", dtype=torch.bfloat16) if enabled else contextlib.nullcontext()


# ----------------------------------------------------------------------------------------------------------
# constrained beam search

def _exclusions(exclude: list[list[int]] | None, b: int) -> torch.Tensor | None:
    if exclude is None:
        return None
    rows = [sorted(set(int(i) for i in h if i > 0)) for h in exclude]
    if len(rows) != b:
        raise ValueError(f"{len(rows)} exclusion lists for {b} inputs")
    width = max([1, *map(len, rows)])
    out = torch.zeros(b, width, dtype=torch.long)
    for i, r in enumerate(rows):
        out[i, :len(r)] = torch.tensor(r, dtype=torch.long)
    return out


@torch.no_grad()
def beam_search(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, vocab: Vocab, trie: Trie,
                beam: int, exclude: list[list[int]] | None = None, use_cache: bool = True,
                autocast: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact trie-constrained beam search over the ``vocab.levels`` code steps, batched.

    Returns ``(items [B, beam], scores [B, beam])``: item ids in descending order of their sequence
    log-probability (log-softmax over the whole vocabulary, summed over the steps); slots with no valid item left
    hold item 0 and score -inf. Only continuations with an item below them are considered, so every returned
    item is a real item; items in ``exclude[b]`` are never returned for input ``b``. When ``beam`` is at least
    the number of valid items nothing is pruned and the result is the exact top of all items. With
    ``autocast`` the T5 runs its matmuls in bf16; the log-softmax and the accumulated scores stay float32.
    """
    from transformers.modeling_outputs import BaseModelOutput
    model.eval()
    b = input_ids.shape[0]
    with _autocast(autocast):
        hidden = model.get_encoder()(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    excl = _exclusions(exclude, b)
    if excl is not None:
        excl_valid = excl > 0
        excl_codes = vocab.codes[(excl - 1).clamp(min=0)]  # [B, H, L]
    prefix = torch.zeros(b, 1, dtype=torch.long)  # prefix id of each beam
    scores = torch.zeros(b, 1)
    dec = torch.full((b, 1), model.config.decoder_start_token_id, dtype=torch.long)
    rows = torch.arange(b)  # encoder row of each (flattened) beam
    cache = None
    for t in range(vocab.levels):
        k = prefix.shape[1]
        enc = BaseModelOutput(last_hidden_state=hidden[rows])
        with _autocast(autocast):
            if use_cache:
                out = model(encoder_outputs=enc, attention_mask=attention_mask[rows], decoder_input_ids=dec[:, -1:],
                            past_key_values=cache, use_cache=True)
                cache = out.past_key_values
            else:
                out = model(encoder_outputs=enc, attention_mask=attention_mask[rows], decoder_input_ids=dec,
                            use_cache=False)
        size, off = vocab.sizes[t], vocab.offsets[t]
        logp = out.logits[:, -1].float().log_softmax(-1)[:, off:off + size].view(b, k, size)
        left = trie.count[t][prefix]  # [B, K, V_t] items under each continuation
        if excl is not None:
            hp = torch.where(excl_valid, trie.prefix[t][(excl - 1).clamp(min=0)], -1)  # [B, H]
            match = (prefix.unsqueeze(2) == hp.unsqueeze(1)).float()  # [B, K, H]
            onehot = F.one_hot(excl_codes[:, :, t], size).float() * excl_valid.unsqueeze(2)  # [B, H, V_t]
            left = left - torch.bmm(match, onehot).round().long()
        cand = (scores.unsqueeze(2) + logp.masked_fill(left <= 0, float("-inf"))).view(b, k * size)
        top, idx = cand.topk(min(beam, k * size), dim=1)
        parent, code = idx // size, idx % size
        alive = torch.isfinite(top)
        nxt = trie.child[t][prefix.gather(1, parent), code]
        prefix = torch.where(alive, nxt, 0).clamp(min=0)
        scores = top
        src = (torch.arange(b).unsqueeze(1) * k + parent).view(-1)  # flattened parent beam of each new beam
        dec = torch.cat([dec[src], (code + off).view(-1, 1)], dim=1)
        rows = torch.arange(b).repeat_interleave(top.shape[1])
        if use_cache and t + 1 < vocab.levels:
            cache.reorder_cache(src)
    items = torch.where(torch.isfinite(scores), prefix, 0)
    return items, scores


def make_scorer(model, vocab: Vocab, trie: Trie, inputs: Inputs, beam: int, batch_size: int,
                exclude_history: bool, autocast: bool = False) -> Scorer:
    """A :data:`r2ec.eval.Scorer`: beam items get their log-probs (descending), all other items -inf."""

    def score(batch: pl.DataFrame) -> torch.Tensor:
        model.eval()
        out = torch.full((batch.height, vocab.n_items + 1), float("-inf"))
        for start in range(0, batch.height, batch_size):
            part = batch.slice(start, batch_size)
            ids, mask = inputs(part)
            excl = part["history_item_ids"].to_list() if exclude_history else None
            items, sc = beam_search(model, ids, mask, vocab, trie, beam, excl, autocast=autocast)
            rows = torch.arange(start, start + part.height).unsqueeze(1).expand_as(items)
            keep = items > 0
            out[rows[keep], items[keep]] = sc[keep]
        return out

    return score


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
