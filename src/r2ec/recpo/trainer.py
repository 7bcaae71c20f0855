"""RecPO training of R2ec and its variants; evaluation through the shared evaluator.

The loop, budgets, checkpoints, validation/early stopping, logging and outputs are the shared LLM harness's
(:mod:`r2ec.train.harness`); this module composes R2ec's model (:mod:`r2ec.model`: item table, user encoder,
the one scoring head, readout) and picks its step (:mod:`r2ec.recpo.step`, :mod:`r2ec.recpo.contrastive`).

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
adv_std, token_loss, item_loss, kl, ratio/clip statistics, reasoning_len, tokens_per_s, grad_norm, lr,
prompts_truncated (the step's user prompts cut to ``llm.max_prompt_tokens``) and the
seconds of each phase (refresh_s, rollout_s, reward_fwd_s, diag_s, update_s, seconds), plus the diagnostics of
:mod:`r2ec.recpo.diagnostics`: the std of each reward (``*_std``), the shares of groups whose rewards
(``flat_group_frac``) or ranks (``flat_rank_frac``) are all equal, ``adv_abs_mean``, ``kl_ref`` (k3 KL of the
rollout policy to the base model, logged whatever ``recpo.kl_coef``), ``entropy`` (mean token entropy of the
sampling distribution over the reasoning tokens), ``forced_frac`` / ``cut_frac`` (``<answer>`` forced / cut at
``recpo.max_reasoning_tokens``), ``mean_rank`` and ``adv_shuffled_frac`` (``recpo.shuffle_advantages``).

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
not on DDP's forward wrapper. With N processes (``accelerate launch`` / ``torchrun``) the global batch of
``recpo.batch_size`` users is split into N shards: every rank rolls out the whole batch (the single-process
sampling stream), keeps its shard's groups, normalises its loss by the global counts and the harness sums the
gradients (:mod:`r2ec.dist`); the item table and evaluations are sharded and gathered, decisions are the main
process's and only it writes files (proven with 2 CPU processes in tests/test_multiprocess.py). DeepSpeed steps on
every backward, so use ``recpo.micro_batch_size=0`` there (checked); the DeepSpeed path has not been run here.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any, Callable

import polars as pl
import torch

from r2ec.config import Params, to_dict
from r2ec import dist
from r2ec.io import Dataset, write_json
from r2ec.model.head import RecHead, attach_heads
from r2ec.model.item_table import ItemTable, build_item_table  # noqa: F401 (the item-table stage, re-exported)
from r2ec.model.run import load_run
from r2ec.model.readout_fit import fit_readout, load_readout, readout_distill, readout_redistill
from r2ec.model.users import UserEncoder, make_engine_for
from r2ec.recpo.contrastive import contrastive_step, negative_ids
from r2ec.recpo.step import recpo_step
from r2ec.recpo.variants import resolve
from r2ec.recpo.warm_start import warm_start
from r2ec.train.harness import LLMHarness

log = logging.getLogger(__name__)


class R2ecTrainer(LLMHarness):
    """R2ec's model and step on the shared LLM harness (internal to :func:`train_r2ec`)."""

    grad_reduce = "sum"  # the steps normalise by the global batch's counts (recpo.step, recpo.contrastive)

    def __init__(self, method: str, ds: Dataset, params: Params, run_dir: Path, cache_dir: Path | None,
                 progress: bool, use_dvclive: bool, hook: Callable[[int, dict], None] | None):
        self.var, self.rc = resolve(params, method)
        self.logq = not self.var.reasoning and params.contrastive.logq_correction
        self._log_q: torch.Tensor | None = None
        self.beta = self.rc.beta if self.var.beta is None else self.var.beta
        self.ro = params.readout
        self.cls: torch.nn.Linear | None = None
        self.readout = None  # r2ec.model.readout.Readout when readout.rank > 0 (trained variants, not cls_head)
        self.distill_target: torch.Tensor | None = None  # [M, rank] what the users-only map regresses onto
        self.distill_set: tuple | None = None  # readout_fit.distill_rows' users, prompts, indices, cache file
        super().__init__(method, ds, params, self.rc, run_dir, cache_dir, progress, use_dvclive, hook)
        # R2ec selects among RecPO steps whose valid N@10 differ by less than a 100-sample subsample resolves
        self.eval_cfg = dataclasses.replace(params.eval, valid_max_samples=self.rc.valid_max_samples)
        self._frozen_split: int | None = None  # llm.frozen_states: the first adapted layer, 0 = off; set on first use
        from r2ec.llm.backbone import answer_token_id
        self.answer_id = answer_token_id(self.tok)
        self.items = ItemTable(self, self.rc.item_batch_size, enabled=not self.var.cls_head)
        if self.cls is not None:
            self.cls = self.policy.r2ec_cls_head
        self.engine = make_engine_for(self, self.rc)
        self.users = UserEncoder(self, self.rc, self.engine, self.var.reasoning)
        self.rec = RecHead(self.rc.tau, lambda: self.items.table, self.readout, self.cls, self.log_prior)

    # ------------------------------------------------------------------------------------------ harness hooks
    def evaluate(self, split: str):
        with self.users.truncation.at(split):  # the split's user prompts are counted under its name
            return super().evaluate(split)

    def run(self) -> dict[str, dict]:
        """The harness's run, then the user prompts cut to ``llm.max_prompt_tokens``: logged once per stage of this
        process, the final test pass's counts written into ``metrics.json`` as ``prompts`` (a resumed run repeats
        only that pass, so the file stays identical; training steps log theirs in ``train_log.jsonl``)."""
        metrics = super().run()
        counter = self.users.truncation
        if dist.world(self.acc) > 1:  # each process counted its shard of the evaluation
            counter.counts = counter.merged(dist.gather_objects(self.acc, counter.counts))
        written = counter.beside(metrics, self.method, self.p.llm.max_prompt_tokens, ("test",))
        if written is not metrics and self.acc.is_main_process:
            write_json(self.run_dir / "metrics.json", written)
        return written

    def setup(self, model: torch.nn.Module) -> None:
        self.readout, self.cls = attach_heads(model, self.var, self.ro, self.rc, self.ds.n_items, self.acc.device)

    def trains(self) -> bool:
        return self.var.train

    def opt_steps_per_step(self) -> int:
        return self.rc.mu if self.var.reasoning else 1

    def train_step(self, rows: pl.DataFrame) -> dict[str, Any]:
        cut = self.users.truncation.truncated()
        rec = recpo_step(self, rows) if self.var.reasoning else contrastive_step(self, rows)
        # the step's user prompts cut to llm.max_prompt_tokens (train_log.jsonl; 0 under the paper profile)
        return {**rec, "prompts_truncated": self.users.truncation.truncated() - cut}

    def before_evaluate(self) -> None:
        self.refresh_table()

    def validate(self) -> bool:
        if self.step > 0 and self.ro.redistill:
            readout_redistill(self)  # the map follows the reasoning the steps trained (its time counts)
        return super().validate()

    def on_fresh_start(self) -> bool:
        if self.readout is not None and not (self.var.reasoning and self.rc.warm_start):
            self.fit_readout()
            return True
        return self.warm_start()

    def fingerprint_extra(self) -> dict[str, Any]:
        return {"logq_correction": self.logq, "readout": to_dict(self.ro)}

    def extra_state(self) -> dict[str, Any]:
        st = {"item_table": self.table, "item_table_step": self.table_step}
        if self.readout is not None:  # the projection is a trainable tensor; its user stats are buffers
            st["readout"] = {k: v.cpu().clone() for k, v in self.readout.state_dict().items()}
        if self.distill_target is not None:
            st["distill_target"] = self.distill_target
        return st

    def restore_extra(self, st: dict[str, Any]) -> None:
        self.table, self.table_step = st["item_table"], st["item_table_step"]
        if self.readout is not None:
            self.readout.load_state_dict(st["readout"])
        self.distill_target = st.get("distill_target")

    def save_best_extra(self, tmp: Path) -> None:
        save_run_extras(tmp, self.items, self.cls, self.readout, {"dataset": self.ds.name, "tau": self.rc.tau})

    def load_best_extra(self, d: Path) -> None:
        load_readout(self.readout, d)
        if (d / "item_table.pt").exists():
            meta = self.items.load(d / "item_table.pt")
            self.step = self.table_step = int(meta.get("step", self.best_step))

    def scorer(self, batch: pl.DataFrame) -> torch.Tensor:
        return self.rec.scores(self.users.states(batch))

    # ------------------------------------------------------------------------------------------ the item loss
    def candidate_log_q(self, cand: list[int]) -> torch.Tensor:
        """``log q`` of each candidate of the contrastive item loss (:func:`r2ec.data.popularity.candidate_log_q`)."""
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

    def item_logprob(self, user: torch.Tensor, items: torch.Tensor, labels: torch.Tensor,
                     cand: list[int]) -> torch.Tensor:
        """``[M]`` item-loss log-probs of each user row's label among the candidate item vectors."""
        return self.rec.candidate_logprob(user, items, labels, self.item_offset(cand))

    # ------------------------------------------------------------------------------------------ composed parts
    @property
    def table(self) -> torch.Tensor | None:
        return self.items.table

    @table.setter
    def table(self, t: torch.Tensor | None) -> None:
        self.items.table = t

    @property
    def table_step(self) -> int:
        return self.items.step

    @table_step.setter
    def table_step(self, s: int) -> None:
        self.items.step = s

    def refresh_table(self) -> float:
        """Re-encode all items with the current adapter (no grad). Returns seconds (0 if already current)."""
        return self.items.refresh(self.step)

    def scores_of(self, user: torch.Tensor) -> torch.Tensor:
        return self.rec.scores(user)

    def prompts_of(self, rows: pl.DataFrame) -> list[list[int]]:
        return self.users.prompts_of(rows)

    def user_states(self, batch: pl.DataFrame, desc: str | None = None) -> torch.Tensor:
        return self.users.states(batch, desc)

    def user_vectors(self, prompts, completions, desc: str | None = None) -> torch.Tensor:
        return self.users.vectors(prompts, completions, desc)

    def prefix(self):
        return self.items.prefix()

    def _negative_ids(self, exclude: list[int]) -> list[int]:
        return negative_ids(self, exclude)

    def recpo_step(self, rows: pl.DataFrame) -> dict[str, Any]:
        return recpo_step(self, rows)

    def contrastive_step(self, rows: pl.DataFrame) -> dict[str, Any]:
        return contrastive_step(self, rows)

    def fit_readout(self) -> dict[str, Any]:
        return fit_readout(self)

    def readout_distill(self) -> dict[str, Any] | None:
        return readout_distill(self)

    def warm_start(self) -> bool:
        return warm_start(self)


def save_run_extras(tmp: Path, items: ItemTable, cls: torch.nn.Linear | None, readout: Any, meta: dict) -> None:
    """The best state's files besides the adapter: ``head.pt``, ``readout.pt``, ``item_table.pt``."""
    if cls is not None:
        torch.save(cls.state_dict(), tmp / "head.pt")
    if readout is not None:
        torch.save({k: v.cpu() for k, v in readout.state_dict().items()}, tmp / "readout.pt")
    items.save(tmp / "item_table.pt", meta)


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
    return R2ecTrainer(method, ds, params, Path(run_dir), cache_dir, progress, dvclive, hook).run()


_Trainer = R2ecTrainer  # the name tests and benchmarks know


def run_scorer(method: str, run_dir: Path, ds: Dataset, params: Params, cache_dir: Path):
    """A trained run loaded as its evaluation scores it (best adapter + item table + the one head): no trainer,
    no optimizer (the method registry's scorer entry, for Table 4)."""
    var, rc = resolve(params, method)
    return load_run(method, var, rc, ds, params, run_dir, cache_dir).scorer
