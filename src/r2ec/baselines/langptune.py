"""LangPTune (Gao et al. 2024): an LLM writes a language user profile, a dense retriever ranks items from it.

Built on the shared LLM harness (:mod:`r2ec.train.harness`: backbone + LoRA of ``llm.*`` / ``lora.*``, budgets,
validation on valid N@10, early stopping, ``last/`` + ``best/``, logs, test outputs); this module adds the round
and the scorer. Settings: ``langptune.*`` (``../shared/BASELINES.md``; official code ``ZhaolinGao/LangPTune``).

* **Profile**: the backbone continues the history prompt with the profile instruction
  (:func:`r2ec.llm.prompts.profile_instruction`) for exactly ``langptune.profile_tokens`` tokens (min = max new
  tokens, as the paper's fixed-length 512-token profiles). Training profiles are sampled
  (``langptune.temperature`` / ``top_k``), evaluation profiles greedy; both on the harness's inference model.
* **Retriever**: a sentence encoder (``langptune.retriever``, default all-MiniLM-L6-v2 from PyPI; pooling
  ``langptune.pooling``) embeds profiles and item texts (:func:`r2ec.text_encoder.item_texts`); scores are cosines
  over the full catalogue (cosine / ``tau`` in the evaluator; the evaluator masks the history). The item table is
  re-encoded whenever the retriever changed.
* **One training step = one alternating round**: ``num_lm_updates`` REBEL updates, each on ``batch_size`` fresh
  users (the harness's seeded batch, then further seeded batches) with 2 sampled profiles per user, reward = NDCG
  (or MRR) of the target under the current retriever, full catalogue, minus ``kl_coef`` x the summed policy /
  reference (adapter disabled) log-ratio, whitened; ``rebel_epochs`` optimizer steps of
  :func:`r2ec.baselines.rebel.rebel_loss` per rollout batch. Every sampled profile joins a FIFO pool of
  ``profile_pool`` (profile, target) pairs; then ``num_emb_updates`` InfoNCE steps (tau, in-batch negatives over
  unique targets; ``logq_correction``: minus log of the target's train share, a deviation) train the retriever
  on ``retriever_batch_size`` pairs drawn from the pool. The official code
  regenerates profiles for every train user between phases; at CPU scale the pool of recent rollouts stands in.
  ``num_lm_updates = 0`` trains only the retriever (profiles of the untouched LLM); ``steps = 0`` evaluates the
  zero-shot pipeline (untrained LLM + pretrained retriever).
* **State**: the retriever's weights are part of the harness's trainable state (``modules()``: ``last/`` and
  ``best/trainable.pt``), its AdamW state and the profile pool are in the resumable checkpoint; the best item
  table is kept in ``best/item_table.pt``; the greedy test profiles go to ``test_profiles.jsonl``.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import polars as pl
import torch

from r2ec.config import Params
from r2ec.io import Dataset, write_text
from r2ec.train.harness import LLMHarness, num, step_seed, trained_scorer

log = logging.getLogger(__name__)

METHOD = "langptune"
RETRIEVER_KEY = "langptune.retriever"
GENS = 2  # REBEL compares two profiles per user


def generate_profiles(engine, tok, prompts: list[list[int]], n: int, temperature: float, top_k: int,
                      length: int, seed: int) -> list[list[list[int]]]:
    """``n`` profiles of exactly ``length`` tokens per prompt (greedy when ``temperature`` is 0): token ids."""
    groups = engine.generate(prompts, group_size=n, temperature=temperature, top_k=top_k, max_new_tokens=length,
                             seed=seed, old_logprobs=False, min_new_tokens=length)
    # the engine closes every completion with its forced <answer>: not part of a profile
    return [[list(t.completion_ids[:-1]) for t in g] for g in groups]


@torch.no_grad()
def encode_table(rtok, retriever, texts: list[str], max_tokens: int, pooling: str, batch_size: int = 64
                 ) -> torch.Tensor:
    """``[len(texts) + 1, D]`` retriever embeddings (row 0 = the padding item, zeros), eval mode, no grad."""
    from r2ec.text_encoder import encode_texts
    was = retriever.training
    retriever.eval()
    rows = [encode_texts(rtok, retriever, texts[s:s + batch_size], max_tokens, pooling).cpu()
            for s in range(0, len(texts), batch_size)]
    retriever.train(was)
    out = torch.cat(rows)
    return torch.cat([torch.zeros(1, out.shape[1]), out])


class _LangPTune(LLMHarness):
    """LangPTune's round and scorer on the shared LLM harness (internal to :func:`train_langptune`)."""

    def __init__(self, ds: Dataset, params: Params, run_dir: Path, cache_dir: Path | None, progress: bool,
                 use_dvclive: bool, hook: Callable[[int, dict], None] | None):
        from r2ec.llm.rollout import make_engine
        from r2ec.text_encoder import item_texts, load_text_encoder

        self.lc = params.langptune
        super().__init__(METHOD, ds, params, self.lc, run_dir, cache_dir, progress, use_dvclive, hook)
        lc = self.lc
        self.rtok, self.retriever = load_text_encoder(lc.retriever, RETRIEVER_KEY)
        self.retriever.to(self.acc.device)
        self.ropt = torch.optim.AdamW([q for q in self.retriever.parameters() if q.requires_grad],
                                      lr=lc.retriever_lr, weight_decay=0.0)
        self.rversion = 0  # bumped by every retriever update: the item table is stale when it moved
        self.table: torch.Tensor | None = None
        self.table_version = -1
        self.item_text = item_texts(ds.items)
        self.items_by_id = {int(r["item_id"]): r for r in ds.items.iter_rows(named=True)}
        self.domain = ds.name
        self.engine = make_engine("hf", self.policy, self.tok, batch_size=lc.eval_batch_size)
        self.pool: list[tuple[str, int]] = []  # (profile, target item) of recent rollouts, oldest first
        self.log_q = None
        if lc.logq_correction:
            # the add-one smoothed train share of the prior (weight 1): in-batch keys enter a batch as targets
            from r2ec.data.popularity import log_popularity_prior
            self.log_q = log_popularity_prior(ds.split("train"), ds.n_items)
        self.profiles: dict[int, str] = {}  # sample_id -> greedy profile of the running evaluation
        self._train_rows: pl.DataFrame | None = None

    # ------------------------------------------------------------------------------------------ harness hooks
    def modules(self) -> dict[str, torch.nn.Module]:
        return {"policy": self.policy, "retriever": self.retriever}

    def opt_steps_per_step(self) -> int:
        return max(1, self.lc.num_lm_updates * self.lc.rebel_epochs)

    def before_evaluate(self) -> None:
        self.refresh_table()

    def on_fresh_start(self) -> bool:
        # the untrained profile + retriever pipeline is a candidate of model selection: at CPU scale training
        # can leave the retriever below it (valid N@10 .021 at step 0, .007-.014 after 5-12 rounds), so it is
        # validated at step 0 and kept when nothing trained beats it (a zero-shot run, steps 0, just evaluates)
        return self.tc.steps > 0

    def extra_state(self) -> dict[str, Any]:
        return {"retriever_opt": self.ropt.state_dict(), "pool": list(self.pool), "retriever_version": self.rversion}

    def restore_extra(self, st: dict[str, Any]) -> None:
        self.ropt.load_state_dict(st["retriever_opt"])
        self.pool = [(str(t), int(i)) for t, i in st["pool"]]
        self.rversion = int(st["retriever_version"])
        self.table = None

    def load_best_extra(self, d: Path) -> None:
        self.rversion += 1  # the best retriever was loaded: its item table was kept with it
        self.table = None
        if (d / "item_table.pt").exists():
            self.table = torch.load(d / "item_table.pt", map_location="cpu", weights_only=True)["table"]
            self.table_version = self.rversion

    def save_best_extra(self, tmp: Path) -> None:
        if self.table is not None:
            torch.save({"table": self.table, "version": self.rversion}, tmp / "item_table.pt")

    # ------------------------------------------------------------------------------------------ helpers
    def refresh_table(self) -> float:
        """Re-encode every item text with the current retriever when it changed; returns the seconds spent."""
        if self.table is not None and self.table_version == self.rversion:
            return 0.0
        t0 = time.perf_counter()
        lc = self.lc
        with self.autocast():
            self.table = encode_table(self.rtok, self.retriever, self.item_text, lc.retriever_max_tokens, lc.pooling)
        self.table_version = self.rversion
        return time.perf_counter() - t0

    def embed(self, texts: list[str]) -> torch.Tensor:
        with self.autocast():
            return encode_table(self.rtok, self.retriever, texts, self.lc.retriever_max_tokens, self.lc.pooling)[1:]

    def prompts_of(self, rows: pl.DataFrame) -> list[list[int]]:
        from r2ec.llm.prompts import sample_prompt_ids
        return [sample_prompt_ids(self.tok, r, self.items_by_id, self.domain, self.p.llm.system_prompt,
                                  self.p.llm.max_prompt_tokens, task="profile") for r in rows.iter_rows(named=True)]

    def profiles_of(self, prompts: list[list[int]], n: int, temperature: float, seed: int) -> list[list[list[int]]]:
        model, ctx = self.infer()
        self.engine.sync_weights(model)
        with ctx:
            return generate_profiles(self.engine, self.tok, prompts, n, temperature, self.lc.top_k,
                                     self.lc.profile_tokens, seed)

    def decode(self, ids: list[int]) -> str:
        return self.tok.decode(ids, skip_special_tokens=True).strip()

    def ranks_of(self, profiles: list[str], rows: pl.DataFrame, n: int) -> torch.Tensor:
        """Full-catalogue ranks of each row's target (rows repeated ``n`` times, user-major) under the current
        retriever, history masked as the evaluator does."""
        from r2ec.eval.ranking import rank_targets
        from r2ec.llm.encoder import cosine_scores
        scores = self.with_prior(cosine_scores(self.embed(profiles), self.table, self.lc.tau))
        targets = torch.as_tensor(rows["target_item_id"].to_list()).repeat_interleave(n)
        hist = ([h for h in rows["history_item_ids"].to_list() for _ in range(n)] if self.p.eval.mask_history
                else None)
        return rank_targets(scores, targets, hist, self.p.eval.mask_repeated_target)

    def seq_logprobs(self, pairs: list[tuple[list[int], list[int]]]) -> torch.Tensor:
        """Summed profile log-probs of the policy (``log_softmax(logits / temperature)``), ``[len(pairs)]``."""
        from r2ec.llm.rollout import completion_logprobs
        lps = completion_logprobs(self.policy, pairs, self.lc.temperature, pad_id=self.pad_id,
                                  batch_size=self.lc.eval_batch_size)
        return torch.stack([lp.sum() for lp in lps])

    def lm_batch(self, rows: pl.DataFrame, k: int) -> pl.DataFrame:
        """The k-th REBEL batch of this round: the harness's batch, then seeded draws of the train pool."""
        if k == 0:
            return rows
        if self._train_rows is None:
            self._train_rows = self.train_pool()
        pool = self._train_rows
        rng = np.random.default_rng([self.lc.seed, self.step, self.acc.process_index, k])
        n = min(self.lc.batch_size, pool.height)
        return pool[np.sort(rng.choice(pool.height, size=n, replace=False)).tolist()]

    # ------------------------------------------------------------------------------------------ the round
    def train_step(self, rows: pl.DataFrame) -> dict[str, Any]:
        lc = self.lc
        recs = [self.rebel_update(self.lm_batch(rows, k), k) for k in range(max(1, lc.num_lm_updates))]
        rec = {key: float(np.mean([r[key] for r in recs])) for key in recs[0]}
        t = time.perf_counter()
        losses = [self.retriever_step(j) for j in range(lc.num_emb_updates)]
        if losses:
            rec["retriever_loss"] = float(np.mean(losses))
        rec["retriever_s"] = time.perf_counter() - t
        rec["pool"] = len(self.pool)
        return rec

    def rebel_update(self, rows: pl.DataFrame, k: int) -> dict[str, float]:
        """Sample 2 profiles per user, reward them, add them to the pool and (num_lm_updates > 0) take
        ``rebel_epochs`` REBEL steps on them."""
        from r2ec.baselines.rebel import rank_reward, rebel_loss, whiten
        lc = self.lc
        rec: dict[str, float] = {"refresh_s": self.refresh_table()}
        t = time.perf_counter()
        prompts = self.prompts_of(rows)
        groups = self.profiles_of(prompts, GENS, lc.temperature, step_seed(lc.seed, self.step, 10 + k))
        pairs = [(p, c) for p, g in zip(prompts, groups) for c in g]  # user-major: u0g0, u0g1, u1g0, ...
        texts = [self.decode(c) for _, c in pairs]
        rec["rollout_s"] = time.perf_counter() - t
        t = time.perf_counter()
        ranks = self.ranks_of(texts, rows, GENS)
        score = rank_reward(ranks, lc.reward)
        targets = [int(x) for x in rows["target_item_id"].to_list() for _ in range(GENS)]
        self.pool = (self.pool + list(zip(texts, targets)))[-lc.profile_pool:]
        rec.update({"reward": float(score.mean()), "mean_rank": float(ranks.float().mean()),
                    "profile_len": float(np.mean([len(c) for _, c in pairs]))})
        if lc.num_lm_updates == 0:
            rec["reward_s"] = time.perf_counter() - t
            return rec
        self.policy.eval()  # no LoRA dropout: an unchanged policy has log-ratio exactly 0
        with torch.no_grad(), self.autocast():
            old = self.seq_logprobs(pairs)
            kl = torch.zeros_like(old)
            if lc.kl_coef > 0:
                with self.policy.disable_adapter():
                    kl = old - self.seq_logprobs(pairs)
        total = score.to(old.device) - lc.kl_coef * kl.float()
        r = (whiten(total) if lc.whiten else total).view(-1, GENS)
        old2 = old.float().view(-1, GENS)
        rec["reward_s"] = time.perf_counter() - t
        t = time.perf_counter()
        for _ in range(lc.rebel_epochs):
            self.opt.zero_grad(set_to_none=True)
            with self.autocast():
                loss = rebel_loss(self.seq_logprobs(pairs).view(-1, GENS), old2, r, lc.eta)
            self.acc.backward(loss)
            gnorm = self.optimizer_step()
        rec.update({"update_s": time.perf_counter() - t, "rebel_loss": loss.item(), "grad_norm": num(gnorm),
                    "kl": float(kl.mean()), "reward_total": float(total.mean())})
        return rec

    def retriever_step(self, j: int) -> float:
        """One InfoNCE step of the retriever on pairs drawn (seeded) from the profile pool."""
        from r2ec.baselines.rebel import info_nce
        from r2ec.train.losses import in_batch_labels
        from r2ec.text_encoder import encode_texts
        lc = self.lc
        rng = np.random.default_rng([lc.seed, self.step, 1000 + j])
        idx = rng.choice(len(self.pool), size=min(lc.retriever_batch_size, len(self.pool)), replace=False)
        texts = [self.pool[i][0] for i in idx]
        uniq, labels = in_batch_labels([self.pool[i][1] for i in idx])
        self.retriever.train()
        self.ropt.zero_grad(set_to_none=True)
        with self.autocast():  # the retriever's matmuls in bf16 with llm.autocast=bf16; cosines stay float32
            q = encode_texts(self.rtok, self.retriever, texts, lc.retriever_max_tokens, lc.pooling)
            keys = encode_texts(self.rtok, self.retriever, [self.item_text[i - 1] for i in uniq],
                                lc.retriever_max_tokens, lc.pooling)
            lp, keys_ix = self.log_prior(), torch.as_tensor(uniq)
            loss = info_nce(q, keys, labels.to(q.device), lc.tau,
                            None if self.log_q is None else self.log_q[keys_ix], None if lp is None else lp[keys_ix])
        loss.backward()
        torch.nn.utils.clip_grad_norm_([q for q in self.retriever.parameters() if q.requires_grad], lc.grad_clip)
        self.ropt.step()
        self.retriever.eval()
        self.rversion += 1
        return loss.item()

    # ------------------------------------------------------------------------------------------ evaluation
    def scorer(self, batch: pl.DataFrame) -> torch.Tensor:
        from r2ec.llm.encoder import cosine_scores
        lc = self.lc
        groups = self.profiles_of(self.prompts_of(batch), 1, 0.0, lc.seed)
        texts = [self.decode(g[0]) for g in groups]
        self.profiles.update(zip((int(s) for s in batch["sample_id"].to_list()), texts))
        return self.with_prior(cosine_scores(self.embed(texts), self.table, lc.tau))

    def evaluate(self, split: str) -> tuple[dict, pl.DataFrame]:
        self.profiles = {}
        out = super().evaluate(split)
        if split == "test" and self.acc.is_main_process:
            write_text(self.run_dir / "test_profiles.jsonl",
                       "".join(json.dumps({"sample_id": s, "profile": p}) + "\n"
                               for s, p in sorted(self.profiles.items())))
        return out


def train_langptune(ds: Dataset, params: Params, run_dir: Path, cache_dir: Path | None = None,
                    progress: bool = True, *, dvclive: bool = True,
                    hook: Callable[[int, dict], None] | None = None) -> dict[str, dict]:
    """Train LangPTune (``langptune.steps = 0``: evaluate the zero-shot pipeline) and evaluate it on test.

    Writes the harness's run layout (``metrics.json``, ``ranks.parquet``, ``config.json``, ``train_log.jsonl``,
    ``valid_log.jsonl``, ``best/``, ``last/``, ``dvclive/``) plus ``test_profiles.jsonl``; ``hook(step, record)``
    is called after each round (tests use it to interrupt a run).
    """
    return _LangPTune(ds, params, Path(run_dir), cache_dir, progress, dvclive, hook).run()


def recommend_profile(run_dir: Path, params: Params, model, tok, messages: list[dict],
                      items: pl.DataFrame) -> tuple[str, torch.Tensor]:
    """``python -m r2ec recommend`` on a LangPTune run: the greedy profile of the chat ``messages`` (the profile
    task's user prompt) and its ``[N+1]`` scores (cosine / tau) against the run's best item table."""
    from r2ec.llm.backbone import answer_token_id, autocast_ctx
    from r2ec.llm.encoder import cosine_scores
    from r2ec.llm.prompts import render_prompt
    from r2ec.llm.rollout import HFRolloutEngine
    from r2ec.train.checkpoint import load_trainable_state
    from r2ec.text_encoder import item_texts, load_text_encoder

    lc = params.langptune
    rtok, retriever = load_text_encoder(lc.retriever, RETRIEVER_KEY)
    best = Path(run_dir) / "best"
    if (best / "trainable.pt").exists():
        state = torch.load(best / "trainable.pt", map_location="cpu", weights_only=True)
        load_trainable_state({"retriever": retriever}, state)
    if (best / "item_table.pt").exists():
        table = torch.load(best / "item_table.pt", map_location="cpu", weights_only=True)["table"]
    else:
        with autocast_ctx(params.llm, "cpu"):
            table = encode_table(rtok, retriever, item_texts(items), lc.retriever_max_tokens, lc.pooling)
    prompt = render_prompt(tok, messages, params.llm.system_prompt, max_tokens=params.llm.max_prompt_tokens)
    engine = HFRolloutEngine(model, tok, answer_token_id(tok))
    ids = generate_profiles(engine, tok, [prompt], 1, 0.0, 0, lc.profile_tokens, lc.seed)[0][0]
    profile = tok.decode(ids, skip_special_tokens=True).strip()
    with autocast_ctx(params.llm, "cpu"):
        prof = encode_table(rtok, retriever, [profile], lc.retriever_max_tokens, lc.pooling)[1:]
    return profile, cosine_scores(prof, table, lc.tau)[0]


# the method registry's uniform entries (r2ec.methods)
def train_method(method: str, ds: Dataset, params: Params, run_dir: Path, cache_dir: Path, progress: bool) -> dict:
    return train_langptune(ds, params, run_dir, cache_dir, progress)


def run_scorer(method: str, run_dir: Path, ds: Dataset, params: Params, cache_dir: Path):
    return trained_scorer(_LangPTune(ds, params, Path(run_dir), cache_dir, False, False, None))
