"""RecPO training of R2ec and its variants; evaluation through the shared evaluator.

The loop, budgets, checkpoints, validation/early stopping, logging and outputs are the shared LLM harness's
(:mod:`r2ec.train.harness`); this module adds R2ec's steps, its item table and its scorer.

One RecPO step (method ``r2ec``, ``r2ec_no_rd``, ``r2ec_no_rc``, ``r2ec_cls_head``):

1. a seeded batch of ``recpo.batch_size`` train samples (``numpy.random.default_rng([seed, step])`` over the
   ``recpo.train_max_samples`` subsample) -> user prompts;
2. item table refresh when it is ``recpo.item_refresh_every`` steps old (no grad; also refreshed whenever a
   validation needs the current adapter's table, which then counts as the refresh). Gradients never flow
   through the cached table: it only serves the reward (and evaluation);
3. rollouts: G = ``recpo.group_size`` trajectories per user (engine ``recpo.engine``), reasoning of at most
   ``recpo.max_reasoning_tokens`` tokens ending in ``<answer>``;
4. reward forward (no grad, eval mode, still the rollout policy's parameters), one pass that yields the REAL old
   log-probs (``log_softmax(logits / temperature)``, the TRL convention) and the user vectors (hidden state at
   the final ``<answer>``); scores cos/tau against the table (or the classification head), plus
   ``recpo.popularity_prior * log p_hat(item)`` when that is on, history masked, fused reward (see
   :mod:`r2ec.recpo.rewards`);
5. advantages (GRPO or RLOO) per user group; best-trajectory gating (``recpo.item_topk``);
6. ``recpo.mu`` update passes of ``token_loss + item_loss (+ kl_coef * kl)``: the token loss over all
   trajectories, the item loss over the best ones against FRESH in-batch encodings of the batch's target items
   (with grad: both the user and the item side learn; old item log-probs come from the same items encoded
   before the first pass), plus ``recpo.uniform_negatives`` catalogue items drawn uniformly per step and encoded
   the same way (Mixed Negative Sampling; 0 = in-batch only as in the paper). Passes run in eval mode (LoRA
   dropout off, like TRL's ``disable_dropout``) so an unchanged policy has ratio exactly 1; AdamW + warmup + schedule (``constant`` means
   ``constant_with_warmup``: warmup is applied), grad-norm clip. One optimizer step per pass; a pass is
   accumulated over ``recpo.micro_batch_size`` trajectories at a time with the identical loss (token mean over
   the whole batch). The completion's closing ``<answer>`` counts as a completion token even when the engine
   forced it (so a positive advantage also teaches the model to close its reasoning).

Log-probs follow the rollout engine's convention (:func:`r2ec.llm.rollout.completion_logprobs`:
``log_softmax(logits / temperature)``, TRL's), for the old, new and reference (KL) policies alike.
Per step ``train_log.jsonl`` (and dvclive ``train/<key>``) records reward, reward_ndcg, reward_prob, adv_mean,
adv_std, token_loss, item_loss, kl, ratio/clip statistics, reasoning_len, tokens_per_s, grad_norm, lr and the
seconds of each phase (refresh_s, rollout_s, reward_fwd_s, update_s, seconds).

``r2ec_no_reasoning`` trains the same encoder with in-batch InfoNCE (user vector at ``<answer>`` placed right
after the prompt, negatives = the other in-batch targets plus the uniform negatives, cos/tau) and no generation.
``llm.autocast=bf16`` runs every forward under bf16 autocast (accelerate's mixed precision, also on CPU); the
LM head and every cos/tau score stay in float32. ``r2ec_zeroshot`` evaluates the untrained backbone. Validation every ``recpo.eval_every`` steps (and at the last step) on valid
N@10 through :func:`r2ec.eval.evaluate`; early stopping after ``recpo.patience`` validations without
improvement; the best adapter is kept in ``run_dir/best/`` and evaluated on test. Evaluation reasoning is
greedy (temperature 0), ``recpo.max_reasoning_tokens`` long.

Resumability: ``run_dir/last/`` (see :mod:`r2ec.train.checkpoint`) every ``recpo.checkpoint_every`` steps and
at the end; every stochastic choice of a step is seeded from ``(recpo.seed, step)``, so a killed and resumed run
reaches bit-identical weights (on CPU).

Multi-GPU: launch with ``accelerate launch --config_file configs/accelerate/zero2.yaml -m r2ec train ...``.
Forwards call the decoder directly, so gradient reduction relies on DeepSpeed's own backward hooks (ZeRO-2),
not on DDP's forward wrapper; each process samples its own batch (``[seed, step, process_index]``); DeepSpeed
steps on every backward, so use ``recpo.micro_batch_size=0`` there (checked). Only the main process writes files.
This path has not been run on GPUs in this repository (CPU machines only).
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import logging
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import polars as pl
import torch
from accelerate.utils import DistributedType

from r2ec.config import Params, to_dict
from r2ec.errors import UserError
from r2ec.io import Dataset, slug
from r2ec.recpo.advantages import advantages as compute_advantages
from r2ec.recpo.losses import best_trajectory_mask, clipped_item_loss, clipped_token_loss, kl_penalty
from r2ec.recpo.rewards import rewards_from_scores
from r2ec.recpo.variants import Variant, get_variant
from r2ec.train.harness import LLMHarness, step_seed
from r2ec.train.losses import in_batch_labels, in_batch_target_logprob

log = logging.getLogger(__name__)


def _pad_logps(logps: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-align a list of per-sequence log-prob vectors into ``[B, Tc]`` plus the valid mask."""
    tc = max(int(x.numel()) for x in logps)
    dev = logps[0].device
    mask = torch.zeros((len(logps), tc), dtype=torch.float32, device=dev)
    rows = []
    for i, lp in enumerate(logps):
        n = int(lp.numel())
        pad = torch.zeros(tc - n, dtype=lp.dtype, device=dev)
        rows.append(torch.cat([pad, lp.float()]))
        mask[i, tc - n:] = 1.0
    out = torch.stack(rows)
    return out, mask


class _Trainer(LLMHarness):
    """R2ec's step and scorer on the shared LLM harness (internal to :func:`train_r2ec`)."""

    def __init__(self, method: str, ds: Dataset, params: Params, run_dir: Path, cache_dir: Path | None,
                 progress: bool, use_dvclive: bool, hook: Callable[[int, dict], None] | None):
        from r2ec.llm.backbone import answer_token_id
        from r2ec.llm.encoder import item_prompt_ids
        from r2ec.llm.rollout import make_engine

        self.var: Variant = get_variant(method)
        # r2ec_no_reasoning trains on its own budget (`contrastive`) over all train samples; every other recpo key
        # is shared
        shared = {k: v for k, v in to_dict(params.contrastive).items() if k in to_dict(params.recpo)}
        self.rc = (params.recpo if self.var.reasoning
                   else dataclasses.replace(params.recpo, **shared, train_max_samples=0))
        self.logq = not self.var.reasoning and params.contrastive.logq_correction
        self._log_q: torch.Tensor | None = None
        self.beta = self.rc.beta if self.var.beta is None else self.var.beta
        self.head: torch.nn.Linear | None = None
        self.ro = params.readout
        self.readout = None  # r2ec.model.readout.Readout when readout.rank > 0 (trained variants, not cls_head)
        super().__init__(method, ds, params, self.rc, run_dir, cache_dir, progress, use_dvclive, hook)
        tok = self.tok
        self.answer_id = answer_token_id(tok)
        self.domain = ds.name  # the prompts derive the item nouns from the dataset name
        self.items_by_id = {int(r["item_id"]): r for r in ds.items.iter_rows(named=True)}
        t0 = time.perf_counter()
        self.item_ids = item_prompt_ids(tok, ds.items, self.domain, params.llm.system_prompt)
        log.info("rendered %d item prompts in %.1fs", len(self.item_ids), time.perf_counter() - t0)
        if self.head is not None:
            self.head = self.policy.r2ec_cls_head
        # vLLM caches shared prefixes itself (automatic prefix caching)
        engine_kw: dict[str, Any] = {"shared_prefix": params.llm.shared_prefix}
        if self.rc.engine == "vllm":  # serves the saved base model (with <answer> tokens) + LoRA adapter requests
            bb = self.backbone_cache
            engine_kw = {"model_path": str(bb) if bb is not None and bb.exists() else params.llm.backbone,
                         "dtype": params.llm.dtype}
        self.engine = make_engine(self.rc.engine, self.policy, tok, self.rc, **engine_kw)
        self._gen_kw = set(inspect.signature(self.engine.generate).parameters)
        self.table: torch.Tensor | None = None
        self.table_step = -1
        self._prefix = None  # FrozenPrefix once built, False when not used

    # ------------------------------------------------------------------------------------------ harness hooks
    def setup(self, model: torch.nn.Module) -> None:
        H = model.config.hidden_size if hasattr(model, "config") else model.get_base_model().config.hidden_size
        if self.ro.rank > 0 and self.var.train and not self.var.cls_head:
            from r2ec.model.readout import Readout
            user_map = self.var.reasoning and self.ro.distill_users > 0
            self.readout = Readout(H, self.ro.rank, self.ro.seed, user_map=user_map).to(self.acc.device)
            model.r2ec_readout = self.readout  # a submodule: its projection is trained and saved with the adapter
        if not self.var.cls_head:
            return
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.rc.seed + 1)
            self.head = torch.nn.Linear(H, self.ds.n_items + 1).to(self.acc.device)
            torch.nn.init.normal_(self.head.weight, std=0.02)
            torch.nn.init.zeros_(self.head.bias)
        # a submodule of the policy: one prepared model (DeepSpeed takes one), one trainable state
        model.r2ec_cls_head = self.head

    def trains(self) -> bool:
        return self.var.train

    def opt_steps_per_step(self) -> int:
        return self.rc.mu if self.var.reasoning else 1

    def train_step(self, rows: pl.DataFrame) -> dict[str, Any]:
        return self.recpo_step(rows) if self.var.reasoning else self.contrastive_step(rows)

    def before_evaluate(self) -> None:
        self.refresh_table()

    def on_fresh_start(self) -> bool:
        if self.readout is not None and not (self.var.reasoning and self.rc.warm_start):
            self.fit_readout()
            return True
        return self.warm_start()

    def fingerprint_extra(self) -> dict[str, Any]:
        return {"logq_correction": self.logq, "readout": to_dict(self.ro)}

    def candidate_log_q(self, cand: list[int]) -> torch.Tensor:
        """``log q`` of each candidate of the contrastive item loss: the chance that an item is a candidate of a
        step, ``q = 1 - (1 - p)^B + U / N`` (``p``: its share of train targets, ``B`` users per step, ``U``
        uniform negatives over ``N`` items). In-batch targets are drawn in proportion to popularity, so without
        this sampling-bias correction the loss learns to rank popular items down."""
        if self._log_q is None:
            from r2ec.data.popularity import candidate_log_q
            self._log_q = candidate_log_q(self.ds.split("train"), self.ds.n_items, self.rc.batch_size,
                                          self.rc.uniform_negatives)
        return self._log_q[torch.as_tensor(cand)]

    def item_offset(self, cand: list[int]) -> torch.Tensor | None:
        """``[K]`` offset added to the item-loss logits of the candidates ``cand``: the popularity prior, minus
        ``log q`` when the sampling-bias correction is on; None when neither applies."""
        lp = self.log_prior()
        off = None if lp is None else lp[torch.as_tensor(cand)]
        if self.logq:
            off = -self.candidate_log_q(cand) if off is None else off - self.candidate_log_q(cand)
        return off

    def extra_state(self) -> dict[str, Any]:
        st = {"item_table": self.table, "item_table_step": self.table_step}
        if self.readout is not None:  # the projection is a trainable tensor; its user stats are buffers
            st["readout"] = {k: v.cpu().clone() for k, v in self.readout.state_dict().items()}
        return st

    def restore_extra(self, st: dict[str, Any]) -> None:
        self.table, self.table_step = st["item_table"], st["item_table_step"]
        if self.readout is not None:
            self.readout.load_state_dict(st["readout"])

    def save_best_extra(self, tmp: Path) -> None:
        from r2ec.llm.encoder import save_item_table
        if self.head is not None:
            torch.save(self.head.state_dict(), tmp / "head.pt")
        if self.readout is not None:
            torch.save({k: v.cpu() for k, v in self.readout.state_dict().items()}, tmp / "readout.pt")
        if self.table is not None:
            meta = {"step": self.table_step, "dataset": self.ds.name, "tau": self.rc.tau}
            save_item_table(tmp / "item_table.pt", self.table, meta)

    def load_best_extra(self, d: Path) -> None:
        from r2ec.llm.encoder import load_item_table
        self._load_readout(d)
        if (d / "item_table.pt").exists():
            self.table, meta = load_item_table(d / "item_table.pt")
            self.step = self.table_step = int(meta.get("step", self.best_step))

    def _load_readout(self, d: Path) -> None:
        """Load ``d/readout.pt`` (projection + user stats) into this run's readout, when it has one."""
        if self.readout is None:
            return
        f = d / "readout.pt"
        if not f.exists():
            raise UserError(f"{f}: not found; that run was trained without the readout (readout.rank = 0)")
        sd = torch.load(f, map_location="cpu", weights_only=True)
        if tuple(sd["proj"].shape) != tuple(self.readout.proj.shape):
            raise UserError(f"{f}: projection of shape {tuple(sd['proj'].shape)}, this run's is "
                             f"{tuple(self.readout.proj.shape)} (different readout.rank?)")
        # a warm start from r2ec_no_reasoning has no users-only map: :meth:`readout_distill` fits it next
        missing, unexpected = self.readout.load_state_dict(sd, strict=False)
        if unexpected or set(missing) - {"user_proj"}:
            raise UserError(f"{f}: unexpected readout tensors {unexpected}, missing {missing}")

    def _seeded_train_rows(self, n: int, salt: int) -> pl.DataFrame:
        train = self.ds.split("train")
        rng = np.random.default_rng([self.ro.seed, salt])
        return train[np.sort(rng.choice(train.height, size=min(n, train.height), replace=False)).tolist()]

    def _fitting_rows(self, reasoning_tokens: int = 0) -> tuple[pl.DataFrame, Path | None]:
        """The readout's fitting users (``readout.train_users`` seeded train samples) and the cache file of their
        base-model states (keyed by backbone, prompts and reasoning length, 0 = none; None without a cache dir)."""
        rows = self._seeded_train_rows(self.ro.train_users, 13)
        return rows, self._cache_path("user_states", self.prompts_of(rows), reasoning_tokens)

    def fit_readout(self) -> dict[str, Any]:
        """Fit the readout on the base model's user states of ``readout.train_users`` seeded train samples
        (:func:`r2ec.model.readout.fit_readout`; the states are cached like the item table: they depend only on the
        backbone and the prompts). Called on a fresh start, before any step, so the adapter is the identity: by
        ``r2ec_no_reasoning``, and by a reasoning variant without ``recpo.warm_start`` (on its greedy-reasoning
        states, which cost a generation each)."""
        from r2ec.model.readout import fit_readout
        self.refresh_table()
        t0 = time.perf_counter()
        # a reasoning variant without warm start fits on its own (greedy-reasoning) states
        rows, cache = self._fitting_rows(self.rc.max_reasoning_tokens if self.var.reasoning else 0)
        if cache is not None and cache.exists():
            states = torch.load(cache, map_location="cpu", weights_only=True)
        else:
            states = self.user_states(rows, desc=f"{self.method} readout users")
            if cache is not None and self.acc.is_main_process:
                from r2ec.io import atomic_path
                with atomic_path(cache) as tmp:  # creates the cache's folder
                    torch.save(states, tmp)
        state_s = time.perf_counter() - t0
        info = fit_readout(self.readout, states, torch.as_tensor(rows["target_item_id"].to_list()),
                           rows["history_item_ids"].to_list(), self.table, self.log_prior(), epochs=self.ro.epochs,
                           lr=self.ro.lr, weight_decay=self.ro.weight_decay)
        info = {"users": int(states.shape[0]), "states_s": round(state_s, 1), **info}
        log.info("%s: readout fitted on %d train users (states %.0fs, fit %.1fs, loss %.3f -> %.3f)", self.method,
                 info["users"], state_s, info["seconds"], info["loss_first"], info["loss_last"])
        if self.acc.is_main_process:
            from r2ec.io import write_text
            write_text(self.run_dir / "readout_fit.json", json.dumps(info, indent=2) + "\n")
        return info

    def readout_distill(self) -> dict[str, Any] | None:
        """``readout.distill_users``: fit the users-only projection of a warm-started reasoning variant
        (:func:`r2ec.model.readout.distill_user_map`) on seeded users of the readout's fitting set: teacher = their
        state right after the prompt (the cached fitting states when the adapter is still the base model's),
        student = their state at ``<answer>`` after greedy reasoning, as evaluation computes it."""
        if self.readout is None or self.readout.user_proj is None:
            return None
        from r2ec.model.readout import distill_user_map
        t0 = time.perf_counter()
        fit_rows, cache = self._fitting_rows()
        rng = np.random.default_rng([self.ro.seed, 17])
        pick = np.sort(rng.choice(fit_rows.height, size=min(self.ro.distill_users, fit_rows.height),
                                  replace=False))
        rows = fit_rows[pick.tolist()]
        identity = all(float(q.detach().abs().max()) == 0.0 for n, q in self.policy.named_parameters()
                       if "lora_B" in n)
        cache = cache if identity else None  # a trained adapter's no-reasoning states are not the cached ones
        if cache is not None and cache.exists():
            teacher = torch.load(cache, map_location="cpu", weights_only=True)[torch.as_tensor(pick)]
        else:
            teacher = self.user_vectors(self.prompts_of(rows), None, desc=f"{self.method} distill teacher")
        student = self.user_states(rows, desc=f"{self.method} distill reasoning")
        info = {**distill_user_map(self.readout, teacher, student, self.ro.distill_ridge),
                "teacher_cached": bool(cache is not None and cache.exists()),
                "seconds": round(time.perf_counter() - t0, 1)}
        log.info("%s: users-only readout map distilled on %d users (R^2 %.3f) in %.0fs", self.method, info["users"],
                 info["r2"], info["seconds"])
        if self.acc.is_main_process:
            from r2ec.io import write_text
            write_text(self.run_dir / "readout_distill.json", json.dumps(info, indent=2) + "\n")
        return info

    # ------------------------------------------------------------------------------------------ helpers
    def _sync_engine(self):
        """Point the rollout engine at the current weights (vLLM: the adapter; HF: the inference model);
        returns the context generation runs in."""
        model, ctx = self.infer()
        self.engine.sync_weights(self.policy if self.rc.engine == "vllm" else model)
        return ctx

    def prompts_of(self, rows: pl.DataFrame) -> list[list[int]]:
        from r2ec.llm.prompts import sample_prompt_ids
        return [sample_prompt_ids(self.tok, r, self.items_by_id, self.domain, self.p.llm.system_prompt,
                                  self.p.llm.max_prompt_tokens)
                for r in rows.iter_rows(named=True)]

    def _generate(self, prompts, group_size, temperature, top_k, seed, **opt):
        kw = {k: v for k, v in opt.items() if k in self._gen_kw}
        return self.engine.generate(prompts, group_size=group_size, temperature=temperature, top_k=top_k,
                                    max_new_tokens=self.rc.max_reasoning_tokens, seed=seed, **kw)

    def _cache_path(self, kind: str, *extra: Any) -> Path | None:
        """``cache_dir/kind/<dataset>-<N>-<hash>.pt`` of what the untrained backbone computes on the item prompts
        (the hash covers the backbone, its precision and the prompts)."""
        if self.cache_dir is None:
            return None
        import hashlib

        from r2ec.llm.backbone import uses_bf16
        h = hashlib.sha256(json.dumps([self.p.llm.backbone, self.p.llm.dtype, uses_bf16(self.p.llm.autocast),
                                       self.p.llm.inference_copy, self.item_ids, *extra]).encode())
        key = slug(f"{self.ds.name}-{self.ds.n_items}-{h.hexdigest()[:16]}")
        return self.cache_dir / kind / f"{key}.pt"

    def _init_table_cache(self) -> Path | None:
        return self._cache_path("item_tables")

    def refresh_table(self) -> float:
        """Re-encode all items with the current adapter (no grad). Returns seconds (0 if already current)."""
        from r2ec.llm.encoder import encode_items, load_item_table, save_item_table
        if self.var.cls_head or (self.table is not None and self.table_step == self.step):
            return 0.0
        t0 = time.perf_counter()
        # the freshly initialised adapter is the identity (LoRA B = 0): its table is the base model's, shared by
        # all variants and runs of this backbone/dataset -> cached
        cache = self._init_table_cache() if self.step == 0 else None
        if cache is not None and cache.exists():
            self.table, _ = load_item_table(cache)
        else:
            pf = self.prefix()
            model, ctx = self.infer()
            with ctx:
                if pf is not None:
                    self.table = pf.table(model, self.rc.item_batch_size)
                else:
                    self.table = encode_items(model, self.tok, self.ds.items, self.domain, self.p.llm,
                                              batch_size=self.rc.item_batch_size, progress=self.progress,
                                              prompt_ids=self.item_ids)
            if cache is not None:
                save_item_table(cache, self.table, {"dataset": self.ds.name, "backbone": self.p.llm.backbone})
        self.table_step = self.step
        return time.perf_counter() - t0

    def scores_of(self, user: torch.Tensor) -> torch.Tensor:
        """``[B, N+1]`` scores of user vectors: cos/tau against the table, or the classification head; plus
        the popularity prior when it is on (:meth:`log_prior`)."""
        if self.head is not None:
            s = self.head(user.to(self.acc.device).float()).float().cpu()
            s[:, 0] = float("-inf")
        else:
            s = self.table_scores(user.float()).cpu()
        return self.with_prior(s)

    def table_scores(self, user: torch.Tensor) -> torch.Tensor:
        """``[B, N+1]`` item-table scores (no prior), differentiable in ``user``: the readout when it is on, else
        cos/tau."""
        if self.readout is not None:
            return self.readout.scores(user, self.table)
        from r2ec.llm.encoder import cosine_scores
        return cosine_scores(user, self.table.to(user.device), self.rc.tau)

    def item_logprob(self, user: torch.Tensor, items: torch.Tensor, labels: torch.Tensor,
                     cand: list[int]) -> torch.Tensor:
        """``[M]`` item-loss log-probs of each user row's label among the candidate item vectors (readout or
        cos/tau logits, plus :meth:`item_offset`)."""
        if self.readout is not None:
            from r2ec.model.readout import table_stats
            from r2ec.train.losses import target_logprob
            return target_logprob(self.readout.logits(user, items, table_stats(self.table)), labels,
                                  self.item_offset(cand))
        return in_batch_target_logprob(user, items, labels, self.rc.tau, key_offset=self.item_offset(cand))

    def head_logprob(self, user: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """``[M]`` ``log softmax_j(head(user)_j + prior_j)[target]`` over the catalogue: the item loss of the
        classification-head variant (with the popularity prior when it is on, as in its ranking)."""
        logits = self.with_prior(self.head(user).float())[:, 1:]
        return torch.log_softmax(logits, -1).gather(1, (targets - 1).view(-1, 1).to(logits.device)).squeeze(1)

    def user_vectors(self, prompts: list[list[int]], completions: list[list[int]] | None,
                     desc: str | None = None) -> torch.Tensor:
        """Pooled user vectors (no grad, eval mode), in mini-batches of ``recpo.eval_batch_size`` (a tqdm bar
        named ``desc`` when given and progress is on). Rows are batched in order of length, so a batch pads to
        its own longest row rather than to a random one (returned in the input order)."""
        from tqdm.auto import tqdm

        from r2ec.llm.encoder import hidden_at_answer_shared
        rows = [p + (c if completions is not None else [self.answer_id])
                for p, c in zip(prompts, completions or [None] * len(prompts))]
        order = sorted(range(len(rows)), key=lambda i: len(rows[i]))
        out = []
        self.policy.eval()
        model, ctx = self.infer()
        bs = self.rc.eval_batch_size
        with torch.no_grad(), ctx:
            for s in tqdm(range(0, len(rows), bs), desc=desc, disable=desc is None or not self.progress):
                chunk = [rows[i] for i in order[s:s + bs]]
                h = (hidden_at_answer_shared(model, chunk, self.answer_id, self.pad_id, batch_size=len(chunk))
                     if self.p.llm.shared_prefix else self._pooled(chunk, model))
                out.append(h.float().cpu())
        if not out:
            return torch.zeros(0)
        vec = torch.cat(out)
        return vec[torch.as_tensor(sorted(range(len(order)), key=order.__getitem__))]

    # ------------------------------------------------------------------------------------------ evaluation
    def scorer(self, batch: pl.DataFrame) -> torch.Tensor:
        return self.scores_of(self.user_states(batch))

    def user_states(self, batch: pl.DataFrame, desc: str | None = None) -> torch.Tensor:
        """``[B, H]`` float32 user vectors of sample rows as evaluation computes them (reasoning variants: at
        ``<answer>`` after greedy reasoning), no grad; a tqdm bar named ``desc`` when given."""
        from tqdm.auto import tqdm
        prompts = self.prompts_of(batch)
        completions = None
        if self.var.reasoning:
            completions, states = [], []
            self._sync_engine()
            # the HF engine reads the <answer> state off its own KV cache: no second pass over prompt + reasoning
            opt = {"old_logprobs": False, "answer_hidden": True}
            bs = self.rc.gen_batch_size
            for s in tqdm(range(0, len(prompts), bs), desc=desc, disable=desc is None or not self.progress):
                with self.infer()[1]:  # a fresh context per chunk: autocast contexts are single-use
                    groups = self._generate(prompts[s:s + bs], 1, 0.0, 0,
                                            step_seed(self.rc.seed, 0, 7), **opt)
                completions += [g[0].completion_ids for g in groups]
                states += [g[0].answer_hidden for g in groups]
            if all(v is not None for v in states):
                return torch.stack(states).float().cpu()
        return self.user_vectors(prompts, completions, desc=desc if completions is None else None)

    def _pooled(self, rows: list[list[int]], model=None) -> torch.Tensor:
        """Float32 hidden state at the last ``<answer>`` of each row, one forward (grad flows if enabled)."""
        from r2ec.llm.encoder import hidden_at_answer
        return hidden_at_answer(model if model is not None else self.policy, rows, self.answer_id, self.pad_id,
                                batch_size=len(rows)).float()

    def prefix(self):
        """The item prompts' frozen-prefix states (:mod:`r2ec.llm.frozen_prefix`), built on first use; None when
        ``llm.frozen_prefix`` is off, every layer is adapted, or the check against a full forward failed."""
        if self._prefix is None:
            self._prefix = False
            from r2ec.llm.frozen_prefix import FrozenPrefix, first_adapted_layer
            split = first_adapted_layer(self.policy)
            if self.p.llm.frozen_prefix and split > 0:
                t0 = time.perf_counter()
                # the states depend only on the untrained bottom layers: one build serves every run (the item
                # table stage builds it; on a CPU without fast bf16 a build is ~13 min at 1 thread)
                path = self._cache_path("frozen_prefix", split)
                states = FrozenPrefix.load_states(path, split) if path is not None else None
                model, ctx = self.infer()
                with ctx:
                    pf = FrozenPrefix(model, split, self.item_ids, self.answer_id, self.pad_id,
                                      self.rc.item_batch_size, states=states)
                self._prefix = pf if pf.ok else False
                if pf.ok and states is None and path is not None and self.acc.is_main_process:
                    pf.save(path)
                log.info("frozen prefix of %d items below layer %d %s in %.1fs", len(self.item_ids), split,
                         "loaded" if states is not None else "built", time.perf_counter() - t0)
        return self._prefix or None

    def _train_user_vectors(self, rows: pl.DataFrame) -> torch.Tensor:
        """User vectors of a training batch, with gradient."""
        return self._pooled([p + [self.answer_id] for p in self.prompts_of(rows)])

    def _item_vectors(self, item_ids: list[int]) -> torch.Tensor:
        pf = self.prefix()
        if pf is not None:
            return pf.vectors(self.policy, [i - 1 for i in item_ids]).float()
        return self._pooled([self.item_ids[i - 1] for i in item_ids])

    def _negative_ids(self, exclude: list[int]) -> list[int]:
        """``recpo.uniform_negatives`` catalogue items outside ``exclude`` (the batch's targets), drawn uniformly
        and seeded per step. They join the in-batch targets as candidates of the item loss and are encoded like
        them, WITH gradient (Mixed Negative Sampling): stop-gradient negatives of a shared encoder let the
        loss fall to ln K by collapsing every vector onto one direction (seen on SmolLM2 and the tiny model)."""
        k = self.rc.uniform_negatives
        if k <= 0:
            return []
        rng = np.random.default_rng([self.rc.seed, self.step, 3, self.acc.process_index])
        pool = np.setdiff1d(np.arange(1, self.ds.n_items + 1), np.asarray(exclude, dtype=np.int64))
        return np.sort(rng.choice(pool, size=min(k, pool.size), replace=False)).tolist()

    def recpo_step(self, rows: pl.DataFrame) -> dict[str, Any]:
        from r2ec.llm.rollout import completion_logprobs

        rc, G = self.rc, self.rc.group_size
        rec: dict[str, Any] = {}
        t = time.perf_counter()
        rec["refresh_s"] = (self.refresh_table() if self.table is None or
                            self.step - self.table_step >= rc.item_refresh_every else 0.0)
        prompts = self.prompts_of(rows)
        targets = rows["target_item_id"].to_list()
        hists = rows["history_item_ids"].to_list()

        # rollouts (eval mode, seeded); vLLM gets the current adapter (never merged)
        t = time.perf_counter()
        ctx = self._sync_engine()
        self.policy.eval()
        with ctx:
            groups = self._generate(prompts, G, rc.temperature, rc.top_k, step_seed(rc.seed, self.step, 1),
                                    old_logprobs=False)
        rec["rollout_s"] = time.perf_counter() - t
        stats = getattr(self.engine, "last_stats", {}) or {}
        trajs = [tr for g in groups for tr in g]
        pairs = [(tr.prompt_ids, tr.completion_ids) for tr in trajs]

        # reward forward (no grad, eval mode, the rollout policy's parameters): the REAL old log-probs and the
        # user vectors at the final <answer> from one pass; then rewards, advantages, gating
        t = time.perf_counter()
        uniq, labels = in_batch_labels(targets)
        with torch.no_grad(), self.autocast():
            old, user_old = completion_logprobs(self.policy, pairs, rc.temperature, pad_id=self.pad_id,
                                                batch_size=rc.eval_batch_size, return_hidden=True,
                                                answer_id=self.answer_id)
            old_logp, cmask = _pad_logps(old)
            user_old = user_old.float()
            scores = self.scores_of(user_old)
            tgt_rep = torch.as_tensor(targets).repeat_interleave(G)
            hist_rep = [h for h in hists for _ in range(G)]
            r, rd, rcont, ranks = rewards_from_scores(scores, tgt_rep, hist_rep, self.beta, rc.k_r)
            R = r.view(-1, G)
            adv = compute_advantages(R, rc.advantage)
            best = best_trajectory_mask(R, rc.item_topk).view(-1)
            best_idx = best.nonzero().flatten()
            sel_labels = labels.repeat_interleave(G)[best_idx]
            sel_targets = tgt_rep[best_idx]
            cand = uniq
            if self.head is not None:
                old_item_logp = self.head_logprob(user_old[best_idx].to(self.acc.device), sel_targets)
            else:
                cand = uniq + self._negative_ids(uniq)  # labels index the leading in-batch targets
                item_old = self._item_vectors(cand)
                old_item_logp = self.item_logprob(user_old[best_idx].to(self.acc.device), item_old,
                                                  sel_labels.to(self.acc.device), cand)
            ref_logp = None
            if rc.kl_coef > 0:
                with self.policy.disable_adapter():
                    ref = completion_logprobs(self.policy, pairs, rc.temperature, pad_id=self.pad_id,
                                              batch_size=rc.eval_batch_size)
                ref_logp, _ = _pad_logps(ref)
        rec["reward_fwd_s"] = time.perf_counter() - t
        adv_flat = adv.view(-1).to(self.acc.device)

        # mu update passes (eval mode: no dropout -> ratio exactly 1 before the first update)
        t = time.perf_counter()
        for _ in range(rc.mu):
            tok_loss, it_loss, kl, tstats, istats = self._update_pass(pairs, old_logp, cmask, ref_logp, adv_flat,
                                                                      best_idx, old_item_logp, cand, sel_labels,
                                                                      sel_targets)
            gnorm = self.optimizer_step()
        rec["update_s"] = time.perf_counter() - t
        n_tok = float(sum(len(c) for _, c in pairs))
        rec.update({
            "reward": float(r.mean()), "reward_ndcg": float(rd.mean()), "reward_prob": float(rcont.mean()),
            "reward_best": float(R.max(dim=1).values.mean()), "mean_rank": float(ranks.float().mean()),
            "adv_mean": float(adv.mean()), "adv_std": float(adv.std()) if adv.numel() > 1 else 0.0,
            "token_loss": tok_loss.item(), "item_loss": it_loss.item(), "kl": kl.item(),
            "ratio_mean": tstats["ratio_mean"], "clip_frac": tstats["clip_frac"],
            "item_ratio_mean": istats["item_ratio_mean"], "grad_norm": gnorm,
            "reasoning_len": (n_tok - len(pairs)) / len(pairs),
            "forced_frac": float(stats.get("forced_frac", float("nan"))),
            "tokens_per_s": float(stats.get("tokens_per_s", n_tok / max(rec["rollout_s"], 1e-9))),
        })
        return rec

    def _update_pass(self, pairs, old_logp, cmask, ref_logp, adv_flat, best_idx, old_item_logp, cand, sel_labels,
                     sel_targets):
        """One gradient of ``token_loss + item_loss + kl_coef * kl``, accumulated over micro-batches.

        Trajectories are processed ``recpo.micro_batch_size`` at a time; each chunk's token loss is weighted by
        its share of the batch's valid tokens and its item-loss terms by ``1/M``, so the accumulated gradient
        equals the full-batch one. The in-batch item vectors are encoded once with grad; chunks backpropagate
        into a detached leaf copy and the item encoder gets the summed gradient at the end.
        """
        from r2ec.llm.rollout import completion_logprobs

        rc = self.rc
        dev = self.acc.device
        self.opt.zero_grad(set_to_none=True)
        n_valid = cmask.sum().clamp_min(1.0)
        M = int(best_idx.numel())
        best_pos = {int(i): j for j, i in enumerate(best_idx.tolist())}
        mb = rc.micro_batch_size if rc.micro_batch_size > 0 else len(pairs)
        chunked = mb < len(pairs)
        if chunked and self.acc.distributed_type == DistributedType.DEEPSPEED:
            raise UserError("recpo.micro_batch_size: DeepSpeed steps on every backward; use "
                             "recpo.micro_batch_size=0 (one backward per update pass) under DeepSpeed")
        items = leaf = None
        if self.head is None:
            with self.autocast():
                items = self._item_vectors(cand)
            # chunked: chunks backpropagate into a leaf copy, the item encoder gets the summed grad at the end
            leaf = items.detach().requires_grad_(True) if chunked else items
        tok_sum = it_sum = kl_sum = 0.0
        clip_n = ratio_sum = 0.0
        it_ratio, it_clip = [], []
        for s in range(0, len(pairs), mb):
            idx = list(range(s, min(s + mb, len(pairs))))
            with self.autocast():
                new, user_new = completion_logprobs(self.policy, [pairs[i] for i in idx], rc.temperature,
                                                    pad_id=self.pad_id, return_hidden=True,
                                                    answer_id=self.answer_id)
                new_logp, _ = _pad_logps(new)
                w = cmask[idx].sum() / n_valid  # chunk's share of the valid tokens: token mean over the batch
                tc = new_logp.shape[1]
                om, cm = old_logp[idx][:, -tc:], cmask[idx][:, -tc:]
                tl, ts = clipped_token_loss(new_logp, om, adv_flat[idx], cm, rc.clip_low, rc.clip_high)
                loss = w * tl
                tok_sum += float(w * tl.detach())
                clip_n += ts["clip_frac"] * float(cm.sum())
                ratio_sum += ts["ratio_mean"] * float(cm.sum())
                if ref_logp is not None:
                    klc = kl_penalty(new_logp, ref_logp[idx][:, -tc:], cm)
                    loss = loss + rc.kl_coef * w * klc
                    kl_sum += float(w * klc.detach())
                sel = [k for k, i in enumerate(idx) if i in best_pos]
                if sel:
                    js = torch.as_tensor([best_pos[idx[k]] for k in sel], device=dev)
                    u = user_new[torch.as_tensor(sel, device=dev)].float()
                    if self.head is not None:
                        nl = self.head_logprob(u, sel_targets[js.cpu()])
                    else:
                        nl = self.item_logprob(u, leaf, sel_labels[js.cpu()].to(dev), cand)
                    il, ist = clipped_item_loss(nl, old_item_logp[js], adv_flat[best_idx][js], rc.clip_low,
                                                rc.clip_high)
                    loss = loss + il * (len(sel) / M)
                    it_sum += float(il.detach()) * len(sel) / M
                    it_ratio.append(ist["item_ratio_mean"] * len(sel))
                    it_clip.append(ist["item_clip_frac"] * len(sel))
            self.acc.backward(loss)
        if chunked and items is not None and leaf.grad is not None:
            self.acc.backward((items * leaf.grad).sum())
        nv = float(n_valid)
        tstats = {"clip_frac": clip_n / nv, "ratio_mean": ratio_sum / nv}
        istats = {"item_ratio_mean": sum(it_ratio) / max(M, 1), "item_clip_frac": sum(it_clip) / max(M, 1)}
        return (torch.tensor(tok_sum), torch.tensor(it_sum), torch.tensor(kl_sum), tstats, istats)

    def contrastive_step(self, rows: pl.DataFrame) -> dict[str, Any]:
        """``r2ec_no_reasoning``: in-batch InfoNCE between <answer>-right-after-prompt user vectors and targets."""
        rec: dict[str, Any] = {"refresh_s": 0.0, "rollout_s": 0.0, "reward_fwd_s": 0.0}
        if self.readout is not None and (self.table is None or
                                         self.step - self.table_step >= self.rc.item_refresh_every):
            rec["refresh_s"] = self.refresh_table()  # the readout's item statistics use the current table
        uniq, labels = in_batch_labels(rows["target_item_id"].to_list())
        t = time.perf_counter()
        cand = uniq + self._negative_ids(uniq)
        self.policy.train()
        self.opt.zero_grad(set_to_none=True)
        with self.autocast():
            user = self._train_user_vectors(rows)
            logp = self.item_logprob(user, self._item_vectors(cand), labels.to(self.acc.device), cand)
            loss = -logp.mean()
        self.acc.backward(loss)
        gnorm = self.optimizer_step()
        self.policy.eval()
        rec["update_s"] = time.perf_counter() - t
        # rewards, advantages and rollout throughput do not apply here: absent from the record, not NaN
        rec.update({"token_loss": 0.0, "item_loss": (-logp.mean()).item(), "kl": 0.0, "grad_norm": gnorm,
                    "reasoning_len": 0.0})
        return rec

    def warm_start(self) -> bool:
        """Start a reasoning variant from another run's best adapter and item table (``recpo.warm_start``).

        A deviation from the paper (which starts RecPO from the base model), used at CPU scale where a few
        hundred RecPO users cannot make a 135M model's embeddings usable: the contrastive run
        (``r2ec_no_reasoning``) does that cheaply without generation, RecPO then trains reasoning on top.
        """
        src = self.rc.warm_start
        if not src or not self.var.reasoning:
            return False
        d = self.run_dir.parent / src / "best"
        if not (d / "trainable.pt").exists():
            raise UserError(f"recpo.warm_start={src!r}: {d / 'trainable.pt'} not found; train {src} on this "
                             f"dataset first (the pipeline does), or set recpo.warm_start to ''")
        state = torch.load(d / "trainable.pt", map_location="cpu")
        mods = self.modules()
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
        self._load_readout(d)
        self.stepped()
        if (d / "item_table.pt").exists() and self.head is None:
            from r2ec.llm.encoder import load_item_table
            self.table, _ = load_item_table(d / "item_table.pt")
            self.table_step = 0
        log.info("%s: warm start from %s", self.method, d)
        self.readout_distill()
        return True

def train_r2ec(method: str, ds: Dataset, params: Params, run_dir: Path, cache_dir: Path | None = None,
               progress: bool = True, *, dvclive: bool = True,
               hook: Callable[[int, dict], None] | None = None) -> dict[str, dict]:
    """Train (or, for ``r2ec_zeroshot``, only evaluate) an R2ec variant; see the module docstring.

    Writes ``run_dir/{metrics.json, ranks.parquet, config.json, train_log.jsonl, valid_log.jsonl, best/,
    last/, dvclive/}`` and returns ``{"valid": metrics, "test": metrics}`` (valid = the selected checkpoint's).
    ``cache_dir`` holds the converted backbone (``backbones/``) and the untrained item table (``item_tables/``).
    ``dvclive=False`` disables dvclive logging; ``hook(step, record)`` is called after each step (tests use it
    to interrupt a run).
    """
    return _Trainer(method, ds, params, Path(run_dir), cache_dir, progress, dvclive, hook).run()


def build_item_table(ds: Dataset, params: Params, cache_dir: Path, progress: bool = True) -> dict:
    """Encode every item with the untrained backbone into ``cache_dir/item_tables/`` and describe it.

    A fresh LoRA adapter is the identity, so this table is where every R2ec variant starts; building it once
    as its own pipeline stage keeps variants that run side by side from each encoding it again.
    """
    import tempfile
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        tr = _Trainer("r2ec_zeroshot", ds, params, Path(tmp), Path(cache_dir), progress, False, None)
        tr.refresh_table()
        path = tr._init_table_cache()
    return {"dataset": ds.name, "backbone": params.llm.backbone, "items": ds.n_items, "table": str(path),
            "seconds": round(time.perf_counter() - t0, 1)}
