"""R2ec's user side: sample prompts, (greedy) reasoning through the rollout engine, and user vectors, the hidden
state at ``<answer>`` (after the reasoning for reasoning variants, right after the prompt otherwise)."""

from __future__ import annotations

import inspect
from typing import Any

import polars as pl
import torch

from r2ec.train.harness import step_seed


class UserEncoder:
    """User prompts, generation and user vectors of a host (:mod:`r2ec.model.host`) with the rollout ``engine``.

    ``rc`` is the variant's resolved training section (``recpo`` or its contrastive overlay): it gives the batch
    sizes, the reasoning budget and the engine's kind."""

    def __init__(self, host: Any, rc: Any, engine: Any, reasoning: bool):
        self.host, self.rc, self.engine, self.reasoning = host, rc, engine, reasoning
        self.items_by_id = {int(r["item_id"]): r for r in host.ds.items.iter_rows(named=True)}
        self.gen_kw = set(inspect.signature(engine.generate).parameters)
        from r2ec.llm.prompts import PromptTruncation
        self.truncation = PromptTruncation()  # user prompts cut to llm.max_prompt_tokens, per stage

    def prompts_of(self, rows: pl.DataFrame) -> list[list[int]]:
        from r2ec.llm.prompts import sample_prompt_ids
        h = self.host
        return [sample_prompt_ids(h.tok, r, self.items_by_id, h.ds.name, h.p.llm.system_prompt,
                                  h.p.llm.max_prompt_tokens, truncation=self.truncation)
                for r in rows.iter_rows(named=True)]

    def sync_engine(self):
        """Point the rollout engine at the current weights (vLLM: the adapter; HF: the inference model);
        returns the context generation runs in."""
        model, ctx = self.host.infer()
        if self.rc.engine == "vllm":  # a new adapter (new request id) only when the weights moved
            self.engine.sync_weights(self.host.policy, version=getattr(self.host, "version", None))
        else:
            self.engine.sync_weights(model)
        return ctx

    def generate(self, prompts, group_size, temperature, top_k, seed, **opt):
        kw = {k: v for k, v in opt.items() if k in self.gen_kw}
        return self.engine.generate(prompts, group_size=group_size, temperature=temperature, top_k=top_k,
                                    max_new_tokens=self.rc.max_reasoning_tokens, seed=seed, **kw)

    def pooled(self, rows: list[list[int]], model=None) -> torch.Tensor:
        """Float32 hidden state at the last ``<answer>`` of each row, one forward (grad flows if enabled)."""
        from r2ec.llm.encoder import hidden_at_answer
        h = self.host
        return hidden_at_answer(model if model is not None else h.policy, rows, h.answer_id, h.pad_id,
                                batch_size=len(rows)).float()

    def train_vectors(self, rows: pl.DataFrame) -> torch.Tensor:
        """User vectors of a training batch (``<answer>`` right after the prompt), with gradient."""
        return self.pooled([p + [self.host.answer_id] for p in self.prompts_of(rows)])

    def vectors(self, prompts: list[list[int]], completions: list[list[int]] | None,
                desc: str | None = None) -> torch.Tensor:
        """Pooled user vectors (no grad, eval mode), in mini-batches of ``recpo.eval_batch_size`` (a tqdm bar
        named ``desc`` when given and progress is on). Rows are batched in order of length, so a batch pads to
        its own longest row rather than to a random one (returned in the input order)."""
        from tqdm.auto import tqdm

        from r2ec.llm.encoder import hidden_at_answer_shared
        h = self.host
        rows = [p + (c if completions is not None else [h.answer_id])
                for p, c in zip(prompts, completions or [None] * len(prompts))]
        order = sorted(range(len(rows)), key=lambda i: len(rows[i]))
        out = []
        h.policy.eval()
        model, ctx = h.infer()
        bs = self.rc.eval_batch_size
        with torch.no_grad(), ctx:
            for s in tqdm(range(0, len(rows), bs), desc=desc, disable=desc is None or not h.progress):
                chunk = [rows[i] for i in order[s:s + bs]]
                v = (hidden_at_answer_shared(model, chunk, h.answer_id, h.pad_id, batch_size=len(chunk))
                     if h.p.llm.shared_prefix else self.pooled(chunk, model))
                out.append(v.float().cpu())
        if not out:
            return torch.zeros(0)
        vec = torch.cat(out)
        return vec[torch.as_tensor(sorted(range(len(order)), key=order.__getitem__))]

    def states(self, batch: pl.DataFrame, desc: str | None = None,
               prompts: list[list[int]] | None = None) -> torch.Tensor:
        """``[B, H]`` float32 user vectors of sample rows as evaluation computes them (reasoning variants: at
        ``<answer>`` after greedy reasoning), no grad; a tqdm bar named ``desc`` when given. ``prompts``: the rows'
        prompts when the caller has rendered them already (:meth:`prompts_of`)."""
        from tqdm.auto import tqdm
        h = self.host
        prompts = self.prompts_of(batch) if prompts is None else prompts
        completions = None
        if self.reasoning:
            completions, states = [], []
            self.sync_engine()
            # the HF engine reads the <answer> state off its own KV cache: no second pass over prompt + reasoning
            opt = {"old_logprobs": False, "answer_hidden": True}
            bs = self.rc.gen_batch_size
            for s in tqdm(range(0, len(prompts), bs), desc=desc, disable=desc is None or not h.progress):
                with h.infer()[1]:  # a fresh context per chunk: autocast contexts are single-use
                    groups = self.generate(prompts[s:s + bs], 1, 0.0, 0, step_seed(self.rc.seed, 0, 7), **opt)
                completions += [g[0].completion_ids for g in groups]
                states += [g[0].answer_hidden for g in groups]
            if all(v is not None for v in states):
                return torch.stack(states).float().cpu()
        return self.vectors(prompts, completions, desc=desc if completions is None else None)


def make_engine_for(host: Any, rc: Any):
    """The rollout engine of ``rc.engine`` on the host's policy (vLLM serves the saved base model + adapters)."""
    from r2ec.llm.rollout import make_engine
    p = host.p
    # vLLM caches shared prefixes itself (automatic prefix caching)
    engine_kw: dict[str, Any] = {"shared_prefix": p.llm.shared_prefix}
    if rc.engine == "vllm":  # serves the saved base model (with <answer> tokens) + LoRA adapter requests
        from r2ec.llm.rollout import vllm_placement
        vllm_placement(rc.vllm_mode)  # an unbuilt mode fails before the backbone is saved
        engine_kw = {"model_path": str(vllm_backbone_dir(host)), "dtype": p.llm.dtype, "mode": rc.vllm_mode,
                     "gpu_memory_utilization": rc.vllm_gpu_memory_utilization, "seed": rc.seed,
                     # a prompt is cut to max_prompt_tokens; vLLM then samples at most max_reasoning_tokens
                     "max_model_len": p.llm.max_prompt_tokens + rc.max_reasoning_tokens + 1}
    return make_engine(rc.engine, host.policy, host.tok, rc, **engine_kw)


def vllm_backbone_dir(host: Any):
    """The local backbone folder vLLM serves (:func:`r2ec.llm.backbone.engine_backbone_dir` in the host's
    ``backbone_cache``); under several processes the main one saves it while the others wait."""
    from r2ec.llm.backbone import engine_backbone_dir
    cache = getattr(host, "backbone_cache", None)
    acc = getattr(host, "acc", None)
    if acc is None or acc.num_processes == 1 or cache is None:
        return engine_backbone_dir(host.p.llm, cache)
    if acc.is_main_process:
        engine_backbone_dir(host.p.llm, cache)
    acc.wait_for_everyone()
    return engine_backbone_dir(host.p.llm, cache)
