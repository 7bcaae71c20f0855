"""One training harness for every LLM method (R2ec and its variants, BigRec/D3 SFT, LangPTune).

The harness owns what every LLM method does the same way; a method subclasses :class:`LLMHarness` and adds
only its own step (:meth:`LLMHarness.train_step`) and its scorer (:meth:`LLMHarness.scorer`, or a whole
:meth:`LLMHarness.evaluate`). What the harness does:

- **model**: the backbone of ``llm.*`` (GGUF from PyPI, HF id or local dir; converted once into
  ``cache_dir/backbones``) with a LoRA adapter of ``lora.*``; :meth:`LLMHarness.setup` may attach extra trainable
  submodules (R2ec's classification head) before the optimizer is built;
- **precision / devices**: accelerate (``llm.autocast=bf16`` = bf16 mixed precision, also on CPU; DeepSpeed ZeRO-2
  through ``accelerate launch``); no-grad passes may run on a merged bf16 copy (``llm.inference_copy``), re-merged
  whenever :attr:`LLMHarness.version` moved (call :meth:`LLMHarness.stepped` after changing weights);
- **optimisation**: AdamW + warmup + schedule (``constant`` means ``constant_with_warmup``) over every trainable
  parameter, grad-norm clip; the schedule counts optimizer steps (``steps x`` :meth:`opt_steps_per_step`);
- **loop**: seeded global batches of ``tc.batch_size`` train samples (``numpy.random.default_rng([seed, step, 0])``
  over the seeded ``tc.train_max_samples`` subsample; with N processes each rank takes its contiguous 1/N shard), step and wall-clock budgets (``tc.steps``,
  ``tc.max_minutes`` summed over resumes; validations count), validation every ``tc.eval_every`` steps and at
  the last step on valid N@10 through the shared evaluator, early stopping after ``tc.patience`` validations
  without improvement, the best trainable state in ``run_dir/best/``;
- **resumability**: ``run_dir/last/`` every ``tc.checkpoint_every`` steps and at the end (trainable tensors,
  optimizer, scheduler, RNG states, best-so-far, patience, budget used, plus :meth:`extra_state`); a checkpoint of
  other params/data (:meth:`fingerprint`) is discarded; log lines written after the checkpoint by a killed run are
  dropped, so a killed and resumed run reaches the same weights and logs as a straight one (on CPU);
- **logging**: ``train_log.jsonl`` (strict JSON: non-finite values left out), ``valid_log.jsonl``, dvclive
  ``train/<key>`` and ``valid/N@10``, a tqdm bar;
- **outputs**: the best state is evaluated on test; ``metrics.json``, ``ranks.parquet``, ``config.json``.

``tc`` is the method's training section (``recpo``, ``bigrec``, ``langptune``...): any object with the fields
``seed, lr, weight_decay, warmup_steps, schedule, grad_clip, batch_size, steps, eval_every, patience,
checkpoint_every, max_minutes, train_max_samples``.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import polars as pl
import torch

from r2ec.config import Params, to_dict
from r2ec.errors import UserError
from r2ec.eval.evaluator import evaluate, write_run_outputs
from r2ec.io import Dataset, append_jsonl
from r2ec import dist
from r2ec.train.checkpoint import save_checkpoint
from r2ec.train.engine import engine_name, make_accelerator, optimizer_state, uses_deepspeed
from r2ec.train.state import RunState
from r2ec.seeding import seed_all

log = logging.getLogger(__name__)

SELECT_METRIC = "N@10"
TIE_METRIC = "N@all"  # breaks SELECT_METRIC ties: NDCG over the full ranking, mean of 1 / log2(rank + 1)


def step_seed(seed: int, step: int, extra: int = 0) -> int:
    """A 32-bit seed derived from ``(seed, step, extra)`` (independent streams per step and purpose)."""
    return int(np.random.SeedSequence([seed, step, extra]).generate_state(1)[0])


def num(x) -> float:
    """float of a tensor/number; NaN for None (DeepSpeed clips inside its step and returns no norm)."""
    return float("nan") if x is None else float(x)


def allow_precision(mp: str) -> None:
    """accelerate keeps one process-wide state and refuses a second Accelerator with another mixed precision;
    a single-process run (a notebook training two configs, the tests) may switch, a distributed one may not."""
    from accelerate.state import AcceleratorState
    if not AcceleratorState._shared_state:
        return
    st = AcceleratorState()
    if st.mixed_precision != mp and st.num_processes == 1:
        AcceleratorState._reset_state()


class LLMHarness(RunState):
    """Model, optimizer, loop, checkpoints, validation and logging of one LLM run (see the module docstring).

    Subclasses implement :meth:`train_step` and :meth:`scorer` (or :meth:`evaluate`) and may override the hooks
    :meth:`setup`, :meth:`trains`, :meth:`opt_steps_per_step`, :meth:`before_evaluate`, :meth:`on_fresh_start`,
    :meth:`extra_state` / :meth:`restore_extra`, :meth:`save_best_extra` / :meth:`load_best_extra` and
    :meth:`fingerprint_extra`.
    """

    def __init__(self, method: str, ds: Dataset, params: Params, tc: Any, run_dir: Path, cache_dir: Path | None,
                 progress: bool, use_dvclive: bool, hook: Callable[[int, dict], None] | None):
        from transformers import get_scheduler

        from r2ec.llm.backbone import add_lora, backbone_cache_name, load_backbone

        self.method, self.ds, self.p, self.tc = method, ds, params, tc
        self.eval_cfg = params.eval  # a subclass may give its validation another subsample
        self._log_prior: torch.Tensor | None = None
        self.run_dir, self.cache_dir = Path(run_dir), (Path(cache_dir) if cache_dir is not None else None)
        self.progress, self.use_dvclive, self.hook = progress, use_dvclive, hook
        self.run_dir.mkdir(parents=True, exist_ok=True)

        from r2ec.llm.backbone import uses_bf16
        mp = "bf16" if uses_bf16(params.llm.autocast) else "no"
        allow_precision(mp)
        log.info("%s: %s matmuls (llm.autocast=%s)", method, "bf16" if mp == "bf16" else "full-precision",
                 params.llm.autocast)
        self.acc = make_accelerator(mp)
        self.world, self.rank = dist.world(self.acc), int(self.acc.process_index)
        log.info("%s: world size %d, engine %s", method, self.world, engine_name(self.acc))
        if self.world > 1 and (tc.batch_size < self.world or tc.batch_size % self.world):
            raise UserError(f"batch_size={tc.batch_size} (the global batch) must be a multiple of the "
                            f"{self.world} processes and at least {self.world}")
        self.clock_scale = dist.clock_scale(self.rank)
        seed_all(tc.seed)
        self.backbone_cache = (self.cache_dir / "backbones" / backbone_cache_name(params.llm.backbone)
                               if self.cache_dir else None)
        model, tok = load_backbone(params.llm, self.backbone_cache)
        self.tok = tok
        self.pad_id = int(tok.pad_token_id)
        model = add_lora(model, params.lora, seed=tc.seed)
        model.to(self.acc.device)
        self.setup(model)
        trainable = [q for q in model.parameters() if q.requires_grad]
        self.opt = torch.optim.AdamW(trainable, lr=tc.lr, weight_decay=tc.weight_decay)
        sched_name = "constant_with_warmup" if tc.schedule == "constant" else tc.schedule
        self.sched = get_scheduler(sched_name, self.opt, num_warmup_steps=tc.warmup_steps,
                                   num_training_steps=max(1, tc.steps * self.opt_steps_per_step()))
        model, self.opt, self.sched = self.acc.prepare(model, self.opt, self.sched)
        self.model = model
        self.policy = self.acc.unwrap_model(model)
        self.version = 0
        self._copy = None
        if params.llm.inference_copy:
            from r2ec.llm.inference_copy import InferenceCopy
            self._copy = InferenceCopy(self.policy, bf16=mp == "bf16")

        self.step = 0
        self.shard = (0, 0)  # [lo, hi) of this rank's rows in the step's global batch (batch_rows)
        self.global_rows: pl.DataFrame | None = None
        self.best_score = -math.inf
        self.best_tie = -math.inf
        self.best_step = -1
        self.best_valid: dict | None = None
        self.bad_evals = 0
        self.done = False
        self.train_s = 0.0  # wall-clock seconds of training so far (summed over resumes): tc.max_minutes
        self.live = None

    # ------------------------------------------------------------------------------------------ hooks
    def setup(self, model: torch.nn.Module) -> None:
        """Called with the LoRA model before the optimizer is built: attach extra trainable submodules here."""

    def trains(self) -> bool:
        """False for a method that is only evaluated (R2ec zero-shot)."""
        return True

    #: how per-rank gradients combine under N processes: "sum" when a step's loss is already this rank's share
    #: of the global-batch loss (normalised by global counts), "mean" when it is a mean over the rank's rows
    grad_reduce = "mean"

    def opt_steps_per_step(self) -> int:
        """Optimizer steps per training step (the schedule's length is ``tc.steps`` times this)."""
        return 1

    def train_step(self, rows: pl.DataFrame) -> dict[str, Any]:
        """One training step on a batch of train samples; returns the record logged for this step."""
        raise NotImplementedError

    def scorer(self, batch: pl.DataFrame) -> torch.Tensor:
        """``[B, n_items + 1]`` scores of a batch of samples (column 0 is the padding item)."""
        raise NotImplementedError

    def before_evaluate(self) -> None:
        """Bring derived state (an item table) up to date with the current weights before an evaluation."""

    def on_fresh_start(self) -> bool:
        """Called when a run starts without a checkpoint; return True to validate at step 0 (a warm start, or an
        untrained model that model selection may keep)."""
        return False

    def extra_state(self) -> dict[str, Any]:
        """Method-specific state saved in the resumable checkpoint."""
        return {}

    def restore_extra(self, st: dict[str, Any]) -> None:
        """Restore what :meth:`extra_state` saved."""

    def save_best_extra(self, tmp: Path) -> None:
        """Write method-specific files of the best state into ``tmp`` (the future ``run_dir/best``)."""

    def load_best_extra(self, d: Path) -> None:
        """Read back what :meth:`save_best_extra` wrote."""

    def fingerprint_extra(self) -> dict[str, Any]:
        """Further inputs a checkpoint's validity depends on."""
        return {}

    # ------------------------------------------------------------------------------------------ helpers
    def modules(self) -> dict[str, torch.nn.Module]:
        """The modules whose trainable parameters make the saved state (extra ones: submodules of the policy)."""
        return {"policy": self.policy}

    def autocast(self):
        return self.acc.autocast() if self.acc.mixed_precision != "no" else contextlib.nullcontext()

    def infer(self):
        """``(model, context)`` for no-grad passes: the merged copy (bf16 weights, no autocast) when
        ``llm.inference_copy``, else the policy under the training precision."""
        if self._copy is None:
            return self.policy, self.autocast()
        return self._copy.get(self.version), contextlib.nullcontext()

    def stepped(self) -> None:
        """The weights changed (optimizer step, restore, load): the inference copy must be re-merged."""
        self.version += 1

    def log_prior(self) -> torch.Tensor | None:
        """``[N+1]`` ``tc.popularity_prior * log p_hat(i)`` (add-one smoothed share of train targets, see
        :func:`r2ec.data.popularity.log_popularity_prior`), or None when the method's config has no prior or
        its weight is 0.

        Added to every item score of a catalogue-scoring method (R2ec, LangPTune), in its losses as in its ranking
        (logit adjustment, Menon et al. 2021): the learned score then only has to model what the user adds to an
        item's base rate instead of re-learning popularity from the few hundred users a CPU budget shows it. A
        deviation from both papers (their scores are bare cosines); 0 turns it off."""
        w = float(getattr(self.tc, "popularity_prior", 0.0))
        if w <= 0:
            return None
        if self._log_prior is None:
            from r2ec.data.popularity import log_popularity_prior
            self._log_prior = log_popularity_prior(self.ds.split("train"), self.ds.n_items, w)
        return self._log_prior

    def with_prior(self, scores: torch.Tensor) -> torch.Tensor:
        """``[B, N+1]`` catalogue scores plus the popularity prior (unchanged when it is off)."""
        lp = self.log_prior()
        return scores if lp is None else scores + lp.to(scores.device).view(1, -1)

    def opt_params(self) -> list[torch.nn.Parameter]:
        return [q for g in self.opt.param_groups for q in g["params"]]

    def optimizer_step(self) -> float:
        """Clip, step the optimizer and the schedule, mark the weights changed; returns the grad norm."""
        if self.world > 1 and not uses_deepspeed(self.acc):
            # forwards call the decoder, not DDP's wrapper: the gradients are reduced here, once per step
            dist.sum_gradients(self.acc, self.opt_params(), 1.0 if self.grad_reduce == "sum" else 1.0 / self.world)
        gnorm = self.acc.clip_grad_norm_(self.opt_params(), self.tc.grad_clip)
        self.opt.step()
        self.sched.step()
        self.stepped()
        return num(gnorm)

    def backward(self, loss: torch.Tensor) -> None:
        """``acc.backward`` of a loss; DeepSpeed averages gradients over the ranks, so a ``grad_reduce="sum"``
        share is scaled by the number of processes there."""
        if self.world > 1 and self.grad_reduce == "sum" and uses_deepspeed(self.acc):
            loss = loss * self.world
        self.acc.backward(loss)

    def batch_rows(self, pool: pl.DataFrame) -> pl.DataFrame:
        """This rank's rows of the step's seeded global batch of ``tc.batch_size`` train samples (the whole
        batch with one process; ``global_rows`` keeps the whole batch, ``shard`` this rank's ``[lo, hi)``)."""
        rng = np.random.default_rng([self.tc.seed, self.step, 0])  # the same global batch on every rank
        n = min(self.tc.batch_size, pool.height)
        rows = pool[np.sort(rng.choice(pool.height, size=n, replace=False)).tolist()]
        self.global_rows, self.shard = rows, dist.shard(n, self.rank, self.world)
        return rows if self.world == 1 else rows[self.shard[0]:self.shard[1]]

    def train_pool(self) -> pl.DataFrame:
        pool = self.ds.split("train")
        if 0 < self.tc.train_max_samples < pool.height:
            rng = np.random.default_rng(self.tc.seed)
            pool = pool[np.sort(rng.choice(pool.height, size=self.tc.train_max_samples, replace=False)).tolist()]
        return pool

    def evaluate(self, split: str) -> tuple[dict, pl.DataFrame]:
        """Metrics and per-sample ranks of the current weights on ``split`` through the shared evaluator."""
        self.before_evaluate()
        with torch.random.fork_rng(devices=[]):
            return evaluate(self.scorer, self.ds, split, self.eval_cfg, desc=f"{self.method} {split}",
                            progress=self.progress, acc=self.acc)

    # ------------------------------------------------------------------------------------------ state
    def log(self, rec: dict[str, Any]) -> None:
        if not self.acc.is_main_process:
            return
        # strict JSON: a value that is not a finite number (DeepSpeed's missing grad norm) is left out
        rec = {k: v for k, v in rec.items() if not (isinstance(v, float) and not math.isfinite(v))}
        append_jsonl(self.run_dir / "train_log.jsonl", rec)
        if self.live is not None:
            for k, v in rec.items():
                if k != "step" and isinstance(v, (int, float)):
                    self.live.log_metric(f"train/{k}", v)
            self.live.next_step()

    # ------------------------------------------------------------------------------------------ main loop
    def validate(self) -> bool:
        """Validate at the current step; keep the best state; return True when early stopping triggers."""
        metrics, ranks = self.evaluate("valid")
        score = float(metrics.get(SELECT_METRIC, next(v for k, v in metrics.items() if k.startswith("N@"))))
        # a few hundred valid samples hold a handful of hits, so N@10 often ties between validations; the
        # full-ranking NDCG (every sample's rank counts) breaks the tie instead of the earlier step winning
        tie = float((1.0 / np.log2(ranks["rank"].to_numpy() + 1.0)).mean()) if ranks.height else 0.0
        improved = score > self.best_score or (score == self.best_score and tie > self.best_tie)
        improved = dist.from_main(self.acc, improved)  # one decision for every rank
        if improved:
            self.best_score, self.best_step, self.best_valid, self.bad_evals = score, self.step, metrics, 0
            self.best_tie = tie
            if self.acc.is_main_process:
                self.save_best(metrics, ranks)
        else:
            self.bad_evals += 1
        self.acc.wait_for_everyone()  # every rank, improved or not: best/ is complete before anyone reads it
        if self.acc.is_main_process:
            append_jsonl(self.run_dir / "valid_log.jsonl", {"step": self.step, **metrics, TIE_METRIC: tie,
                                                            "improved": improved,
                                                            "elapsed_s": self.train_s})
        if self.live is not None:
            self.live.log_metric(f"valid/{SELECT_METRIC}", score)
        log.info("%s step %d valid %s=%.4f (best %.4f @ %d)", self.method, self.step, SELECT_METRIC, score,
                 self.best_score, self.best_step)
        return self.bad_evals >= self.tc.patience

    def run(self) -> dict[str, dict]:
        """Train (resuming ``run_dir/last`` if present), evaluate the best state on test, write the outputs."""
        if self.trains():
            st = self._resume()
            if self.use_dvclive and self.acc.is_main_process:
                try:
                    from dvclive import Live
                    self.live = Live(dir=str(self.run_dir / "dvclive"), save_dvc_exp=False, dvcyaml=None,
                                     resume=st is not None)
                except Exception as e:  # pragma: no cover - logging must never break training
                    log.warning("dvclive disabled: %s", e)
            self.train_loop()
            if self.live is not None:
                self.live.end()
        valid = self.load_best() if self.trains() else None
        if valid is None:
            valid = self.evaluate("valid")
        test = self.evaluate("test")
        metrics = {"valid": valid[0], "test": test[0]}
        config = {**to_dict(self.p), "run": {"method": self.method, "best_step": self.best_step,
                                             "best_valid_score": self.best_score if self.trains() else None}}
        if self.acc.is_main_process:
            write_run_outputs(self.run_dir, metrics, [valid[1], test[1]], config)
        self.acc.wait_for_everyone()
        return metrics

    def budget_s(self) -> float:
        return 60.0 * self.tc.max_minutes if self.tc.max_minutes > 0 else math.inf

    def take_step(self, pool: pl.DataFrame) -> tuple[dict[str, Any], float]:
        """One training step as :meth:`train_loop` takes it (seeded by ``(seed, step)``, on the step's batch of
        ``pool``): this rank's record and its wall seconds; advancing ``step`` is the caller's."""
        t0 = time.perf_counter()
        seed_all(step_seed(self.tc.seed, self.step, 2))
        rec = self.train_step(self.batch_rows(pool))
        return rec, time.perf_counter() - t0

    def train_loop(self) -> None:
        from tqdm.auto import tqdm
        pool = self.train_pool()
        tc = self.tc
        bar = tqdm(total=tc.steps, initial=self.step, desc=f"train {self.method}", disable=not self.progress)
        while not self.done and self.step < tc.steps and self.train_s < self.budget_s():
            rec, sec = self.take_step(pool)
            sec *= self.clock_scale
            self.train_s = dist.from_main(self.acc, self.train_s + sec)  # the main process's clock decides
            if self.world > 1:
                rec = mean_record(dist.gather_objects(self.acc, rec))
            rec = {"step": self.step, **rec, "lr": float(self.sched.get_last_lr()[0]), "seconds": sec,
                   "elapsed_s": self.train_s}
            self.step += 1
            self.log(rec)
            bar.update(1)
            stop = False
            # the budget counts steps and validations alike; the last step (by count or time) is validated
            last = self.step == tc.steps or self.train_s >= self.budget_s()
            if self.step % tc.eval_every == 0 or last:
                tv = time.perf_counter()
                stop = self.validate()
                self.train_s += (time.perf_counter() - tv) * self.clock_scale
            self.done = stop or last
            if self.world > 1:  # budget, early stop and the end are decided once, on the main process
                self.done, self.train_s = dist.from_main(self.acc, (self.done, self.train_s))
            if self.step % tc.checkpoint_every == 0 or self.done:
                opt_state = optimizer_state(self.acc, self.opt)  # DeepSpeed: every rank's partition
                if self.acc.is_main_process:
                    save_checkpoint(self.run_dir / "last", self.state(opt_state))
            self.acc.wait_for_everyone()
            if self.hook is not None:
                self.hook(self.step, rec)
        bar.close()


def mean_record(recs: list[dict[str, Any]]) -> dict[str, Any]:
    """One step record of N ranks' records: numbers averaged over the ranks that logged them (each rank's
    statistics are over its shard), anything else as rank 0 has it."""
    out = dict(recs[0])
    for k, v in out.items():
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            vals = [float(r[k]) for r in recs if isinstance(r.get(k), (int, float))]
            out[k] = sum(vals) / len(vals)
    return out


def trained_scorer(t: LLMHarness):
    """The scorer of a trained run as its evaluation used it: the best state loaded (no optimizer step taken)."""
    if t.trains():
        t.load_best()
    t.before_evaluate()
    return t.scorer
