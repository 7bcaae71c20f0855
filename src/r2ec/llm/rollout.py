"""Reasoning rollouts: G sampled trajectories per user prompt, stopped at ``<answer>``, with old log-probs.

Log-prob convention (TRL's GRPO): per-token log-probs are ``log_softmax(logits / temperature)`` of the
sampled token, where ``temperature`` is the sampling temperature; top-k truncation is NOT applied. Old
log-probs (at rollout time, no grad) and new log-probs (in the loss, with grad) must both come from
:func:`completion_logprobs` with the same temperature so that the ratio is exactly 1 for an unchanged policy.

Completions: the sampled reasoning tokens followed by ``<answer>``. A trajectory that emits the model EOS
has the EOS replaced by ``<answer>``; one that emits neither within ``max_new_tokens`` gets ``<answer>``
appended (so a completion holds at most ``max_new_tokens + 1`` ids). Both cases are ``forced=True``; the
forced ``<answer>`` is scored by the policy like any other token (mask it in the loss if undesired).

Rollouts run in eval mode (LoRA dropout off) and restore the previous mode afterwards.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch

from r2ec.llm.encoder import last_hidden, pad_left
# the HF engine's KV-cache prefills (re-exported: callers and tests reach them here)
from r2ec.llm.prefill import answer_states, prefix_prefill, shared_prefill  # noqa: F401
from r2ec.llm.vllm_setup import VLLM_LORA_RANKS, engine_vocab, vllm_lora_rank, vllm_placement  # noqa: F401

log = logging.getLogger(__name__)


@dataclass
class Trajectory:
    prompt_ids: list[int]
    completion_ids: list[int]  # reasoning tokens, ends with <answer>
    old_logprobs: torch.Tensor = field(default_factory=lambda: torch.zeros(0))  # [len(completion)] float32
    forced: bool = False  # <answer> was appended / replaced EOS rather than sampled
    answer_hidden: torch.Tensor | None = None  # [H] float32 decoder state at the final <answer> (answer_hidden=True)

    @property
    def ids(self) -> list[int]:
        return list(self.prompt_ids) + list(self.completion_ids)

    def reasoning_text(self, tokenizer) -> str:
        """Decoded reasoning (completion without the final ``<answer>``)."""
        return tokenizer.decode(self.completion_ids[:-1], skip_special_tokens=True)


def _pairs(trajs: Sequence[Any]) -> list[tuple[list[int], list[int]]]:
    out = []
    for t in trajs:
        if isinstance(t, Trajectory):
            out.append((list(t.prompt_ids), list(t.completion_ids)))
        else:
            p, c = t
            out.append((list(p), list(c)))
    return out


def _pad_id(model, pad_id: int | None) -> int:
    if pad_id is not None:
        return int(pad_id)
    p = getattr(model.config, "pad_token_id", None)
    return int(p) if p is not None else 0


def completion_logprobs(model, trajectories: Sequence[Any], temperature: float = 1.0, *,
                        pad_id: int | None = None, batch_size: int | None = None,
                        return_hidden: bool = False, answer_id: int | None = None,
                        entropy: list | None = None, frozen: Any = None):
    """Per-completion-token log-probs ``log_softmax(logits / temperature)`` (float32), one tensor per item.

    ``trajectories``: :class:`Trajectory` objects or ``(prompt_ids, completion_ids)`` pairs. One forward pass
    over prompt+completion (left padded, explicit position ids); only completion positions go through the LM
    head (:func:`r2ec.llm.backbone.lm_logits`: the model forward's own logits, Gemma-2's softcapping included, so
    the log-probs are those of the distribution ``generate`` samples from). Gradients flow when enabled — B uses
    this for new log-probs (with grad) and rollouts for old ones (under no_grad), so both are computed
    identically. ``temperature <= 0`` is treated as 1.

    ``return_hidden=True`` (needs ``answer_id``) also returns the hidden state at the last ``answer_id`` of
    each sequence → ``(list[Tensor], Tensor[B, H])`` — the user vector from the same forward pass.

    ``entropy``: a list that receives, per item, the detached token entropies ``-sum_v p log p`` of the same
    ``softmax(logits / temperature)`` (a diagnostic computed from the log-softmax already at hand; the returned
    log-probs are unchanged).

    ``frozen``: a :class:`r2ec.llm.frozen_states.FrozenStates` aligned with ``trajectories``; only the adapted
    layers run, on its states (the same numbers up to float rounding, a fraction of the cost).
    """
    from r2ec.llm.backbone import float32_scope, lm_logits
    from r2ec.llm.pooling import pool_at_last

    pairs = _pairs(trajectories)
    if not pairs:
        return ([], None) if return_hidden else []
    if return_hidden and answer_id is None:
        raise ValueError("return_hidden=True needs answer_id")
    temp = float(temperature) if temperature and temperature > 0 else 1.0
    pad = _pad_id(model, pad_id)
    dev = next(model.parameters()).device
    bs = batch_size or len(pairs)
    logps: list[torch.Tensor] = []
    hiddens = []
    for s in range(0, len(pairs), bs):
        chunk = pairs[s:s + bs]
        if any(len(c) == 0 for _, c in chunk):
            raise ValueError("empty completion")
        ids, mask, pos = pad_left([p + c for p, c in chunk], pad, dev)
        if frozen is not None:
            from r2ec.llm.frozen_prefix import adapted_hidden
            h = adapted_hidden(model, frozen.split, frozen.states[s:s + len(chunk)], mask, pos)
        else:
            h = last_hidden(model, ids, mask, pos)  # [b, T, H]
        T = ids.shape[1]
        rows, cols, lens = [], [], []
        for i, (_, c) in enumerate(chunk):
            n = len(c)
            rows.append(torch.full((n,), i, dtype=torch.long))
            cols.append(torch.arange(T - n - 1, T - 1))
            lens.append(n)
        r = torch.cat(rows).to(dev)
        k = torch.cat(cols).to(dev)
        with float32_scope(h):  # the LM head in the weights' dtype
            logits = lm_logits(model, h[r, k]).float() / temp  # [sum n, V]
        targets = ids[r, k + 1]
        ls = torch.log_softmax(logits, dim=-1)
        lp = ls.gather(1, targets[:, None]).squeeze(1)
        logps.extend(lp.split(lens))
        if entropy is not None:
            with torch.no_grad():
                ent = -(ls.exp() * ls.clamp_min(torch.finfo(ls.dtype).min)).sum(-1)
                entropy.extend(ent.split(lens))
        if return_hidden:
            hiddens.append(pool_at_last(h, ids, answer_id))
    if return_hidden:
        return logps, torch.cat(hiddens, 0)
    return logps


def finish_completion(tokens: Sequence[int], answer_id: int, stop_ids: Sequence[int]) -> tuple[list[int], bool]:
    """Cut sampled ``tokens`` at the first stop id; ensure the completion ends with ``answer_id``.

    Returns ``(completion_ids, forced)``.
    """
    stops = set(int(x) for x in stop_ids) | {int(answer_id)}
    toks = [int(x) for x in tokens]
    for j, t in enumerate(toks):
        if t in stops:
            return toks[:j] + [int(answer_id)], t != answer_id
    return toks + [int(answer_id)], True


def stop_and_pad_ids(tokenizer) -> tuple[list[int], int]:
    """(EOS ids, pad id) of a tokenizer; the pad falls back to the first EOS."""
    eos = tokenizer.eos_token_id
    eos_ids = [int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos]) if e is not None]
    pad_id = int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_ids[0])
    return eos_ids, pad_id


class HFRolloutEngine:
    """Batched ``transformers`` generation with left padding (CPU or a single GPU)."""

    def __init__(self, model, tokenizer, answer_id: int, *, batch_size: int | None = None,
                 logprob_batch_size: int | None = None, shared_prefix: bool = False):
        self.model = model
        self.shared_prefix = shared_prefix  # prefill the prompts' common prefix once per call (prefix_prefill)
        self.tokenizer = tokenizer
        self.answer_id = int(answer_id)
        self.eos_ids, self.pad_id = stop_and_pad_ids(tokenizer)
        self.batch_size = batch_size
        self.logprob_batch_size = logprob_batch_size
        self.last_stats: dict[str, float] = {}

    def sync_weights(self, model=None) -> None:
        """No-op (the HF engine samples from the live model); kept for interface parity with vLLM."""
        if model is not None:
            self.model = model

    def generate(self, prompts: list[list[int]], group_size: int, temperature: float, top_k: int,
                 max_new_tokens: int, seed: int, *, old_logprobs: bool = True,
                 min_new_tokens: int = 0, answer_hidden: bool = False) -> list[list[Trajectory]]:
        """``group_size`` trajectories per prompt (seeded; deterministic for equal inputs and batching).

        ``old_logprobs=False`` skips the extra forward pass (``Trajectory.old_logprobs`` stays empty) for
        callers that recompute them (it costs about one prefill of prompt+completion). ``min_new_tokens``
        suppresses the stop tokens until that many tokens are generated (= ``max_new_tokens``: fixed length).
        ``answer_hidden=True`` also fills ``Trajectory.answer_hidden``, the decoder state at the final
        ``<answer>``, from generation's own KV cache (:func:`answer_states`): evaluation then needs no second
        pass over prompt + completion, which costs as much as the prefill.
        """
        from transformers import GenerationConfig

        from r2ec.llm.arch import window_binds

        model = self.model
        dev = next(model.parameters()).device
        sample = temperature is not None and temperature > 0
        gc = GenerationConfig(
            do_sample=sample, temperature=float(temperature) if sample else None,
            top_k=int(top_k) if sample and top_k and top_k > 0 else None, top_p=None, min_p=None,
            repetition_penalty=None, max_new_tokens=int(max_new_tokens), min_new_tokens=int(min_new_tokens) or None,
            eos_token_id=[self.answer_id] + self.eos_ids, pad_token_id=self.pad_id,
            num_return_sequences=1, return_dict_in_generate=True)
        # whole groups per generate call (batch_size rounded down to a multiple of G): a group's prompt is
        # prefilled once and its KV cache shared by its G samples (:func:`shared_prefill`)
        per = max(1, self.batch_size // group_size) if self.batch_size else max(1, len(prompts))
        was_training = model.training
        model.eval()
        t0 = time.perf_counter()
        trajs: list[Trajectory] = []
        devices = [dev] if dev.type == "cuda" else []
        try:
            with torch.no_grad(), torch.random.fork_rng(devices=devices):
                torch.manual_seed(int(seed))
                for s in range(0, len(prompts), per):
                    users = [list(p) for p in prompts[s:s + per]]
                    chunk = [p for p in users for _ in range(group_size)]
                    kw = {}
                    # a shared prefix leaves masked slots between prefix and suffix: not where a window would cut
                    span = max(map(len, users)) + int(max_new_tokens) + 1
                    if self.shared_prefix and not window_binds(model, span):
                        ids, mask, kw["past_key_values"] = prefix_prefill(model, users, group_size, self.pad_id)
                    else:
                        ids, mask, _ = pad_left(chunk, self.pad_id, dev)
                        if group_size > 1 and ids.shape[1] > 1:
                            kw["past_key_values"] = shared_prefill(model, users, group_size, self.pad_id)
                    out = model.generate(input_ids=ids, attention_mask=mask, generation_config=gc, **kw)
                    part = []
                    for p, toks in zip(chunk, out.sequences[:, ids.shape[1]:].tolist()):
                        comp, forced = finish_completion(toks, self.answer_id, self.eos_ids)
                        part.append(Trajectory(prompt_ids=p, completion_ids=comp, forced=forced))
                    # else (no cache, or masked slots that a sliding window would count): callers run a forward
                    if (answer_hidden and out.past_key_values is not None
                            and not window_binds(model, out.sequences.shape[1] + 1)):
                        h = answer_states(model, out.past_key_values, out.sequences, mask,
                                          [len(t.completion_ids) - 1 for t in part], self.answer_id, self.pad_id)
                        for t, v in zip(part, h.float().cpu()):
                            t.answer_hidden = v
                    trajs.extend(part)
            gen_s = time.perf_counter() - t0
            if old_logprobs:
                with torch.no_grad():
                    lps = completion_logprobs(model, trajs, temperature, pad_id=self.pad_id,
                                              batch_size=self.logprob_batch_size or per * group_size)
                for t, lp in zip(trajs, lps):
                    t.old_logprobs = lp.detach().float().cpu()
        finally:
            model.train(was_training)
        n_tok = sum(len(t.completion_ids) for t in trajs)
        self.last_stats = {"gen_s": gen_s, "total_s": time.perf_counter() - t0, "tokens": float(n_tok),
                           "tokens_per_s": n_tok / max(gen_s, 1e-9),
                           "forced_frac": sum(t.forced for t in trajs) / max(len(trajs), 1)}
        return [trajs[i * group_size:(i + 1) * group_size] for i in range(len(prompts))]


class VLLMRolloutEngine:
    """vLLM sampling (CUDA only). The base model is a saved local HF folder that already carries the
    ``<answer>`` tokens (:func:`r2ec.llm.backbone.engine_backbone_dir`); its tokenizer's ``<answer>`` id, checked
    against the policy's and the model's vocabulary, is the stop id. The LoRA is served as an adapter: each
    :meth:`sync_weights` of new weights saves the PEFT adapter to a fresh temp dir, and the next :meth:`generate`
    passes it as a ``LoRARequest`` with a new int id (vLLM caches adapters by id: a reused id would serve the stale
    one; never merged into the weights). Old log-probs are recomputed with the HF policy model via
    :func:`completion_logprobs`, exactly like the new ones in the loss.

    ``mode`` places the engine (:func:`vllm_placement`); ``seed`` seeds the engine (each request has its own seed).
    """

    def __init__(self, model, tokenizer, answer_id: int, *, model_path: str | Path,
                 max_lora_rank: int | None = None, gpu_memory_utilization: float = 0.4, dtype: str = "bfloat16",
                 max_model_len: int = 4096, logprob_batch_size: int | None = None, mode: str = "colocate",
                 seed: int = 0, **llm_kwargs: Any):
        import os

        try:
            from vllm import LLM
        except ImportError as e:  # pragma: no cover - exercised by the import-guard test via monkeypatch
            raise ImportError("VLLMRolloutEngine needs vLLM (CUDA only); install it with "
                              "`pip install 'r2ec[gpu]'` or use recpo.engine=hf") from e
        self.model = model
        self.tokenizer = tokenizer
        self.answer_id = int(answer_id)
        self.eos_ids, self.pad_id = stop_and_pad_ids(tokenizer)
        self.logprob_batch_size = logprob_batch_size
        self.model_path = str(model_path)
        sid, self.vocab_size = engine_vocab(model_path)
        if sid != self.answer_id:
            raise ValueError(f"{model_path}: {sid} is its <answer> id, the policy's tokenizer has {self.answer_id}")
        if any(not 0 <= e < self.vocab_size for e in self.eos_ids):
            raise ValueError(f"{model_path}: EOS ids {self.eos_ids} lie outside the vocabulary of {self.vocab_size}")
        self.placement = vllm_placement(mode)
        if max_lora_rank is None:
            max_lora_rank = vllm_lora_rank(model)
        # the external launcher reads the torch.distributed rendezvous from the environment (set by accelerate /
        # torchrun under several processes; defaulted here for one)
        for k, v in (("RANK", self.placement["rank"]), ("LOCAL_RANK", self.placement["local_rank"]),
                     ("WORLD_SIZE", self.placement["world_size"]), ("MASTER_ADDR", "localhost"),
                     ("MASTER_PORT", "29513")):
            os.environ.setdefault(k, str(v))
        if torch.cuda.is_available():
            torch.cuda.set_device(self.placement["device"])
        kw = {**self.placement["llm_kwargs"], **llm_kwargs}
        self.llm = LLM(model=self.model_path, tokenizer=self.model_path, enable_lora=True,
                       max_lora_rank=max_lora_rank, max_loras=1, dtype=dtype,
                       gpu_memory_utilization=gpu_memory_utilization, max_model_len=max_model_len,
                       seed=int(seed), **kw)
        self._lora_dir: str | None = None
        self._lora_id = 0
        self._version: Any = None
        self.last_stats: dict[str, float] = {}
        if hasattr(model, "peft_config"):
            self.sync_weights(model)

    def sync_weights(self, peft_model=None, version: Any = None) -> None:
        """Save the current LoRA adapter to a new temp dir; the next generate requests it under a new int id.

        ``version`` (the host's weight version, :meth:`r2ec.train.harness.LLMHarness.stepped`): an unchanged
        version keeps the adapter already saved (same id); None always saves."""
        m = peft_model if peft_model is not None else self.model
        if not hasattr(m, "peft_config"):
            return
        if version is not None and version == self._version and self._lora_dir is not None:
            return
        new_dir = tempfile.mkdtemp(prefix="r2ec-lora-")
        m.save_pretrained(new_dir, save_embedding_layers=False)
        old, self._lora_dir = self._lora_dir, new_dir
        self._lora_id += 1
        self._version = version
        if old:
            shutil.rmtree(old, ignore_errors=True)

    def _lora_request(self):
        if self._lora_dir is None:
            return None
        from vllm.lora.request import LoRARequest
        return LoRARequest(f"r2ec-{self._lora_id}", self._lora_id, self._lora_dir)

    def generate(self, prompts: list[list[int]], group_size: int, temperature: float, top_k: int,
                 max_new_tokens: int, seed: int, *, old_logprobs: bool = True) -> list[list[Trajectory]]:
        from vllm import SamplingParams

        t0 = time.perf_counter()
        # temperature 0 = greedy in vLLM; top_k -1 = off (accepted by old and new versions)
        params = [SamplingParams(n=group_size, temperature=max(float(temperature), 0.0),
                                 top_k=int(top_k) if top_k and top_k > 0 else -1,
                                 max_tokens=int(max_new_tokens),
                                 stop_token_ids=[self.answer_id] + [e for e in self.eos_ids if e != self.answer_id],
                                 seed=int(seed) + i) for i in range(len(prompts))]
        reqs = [{"prompt_token_ids": list(p)} for p in prompts]
        outs = self.llm.generate(reqs, params, lora_request=self._lora_request(), use_tqdm=False)
        gen_s = time.perf_counter() - t0
        groups = []
        for p, o in zip(prompts, outs):
            g = []
            for c in o.outputs:
                comp, forced = finish_completion(list(c.token_ids), self.answer_id, self.eos_ids)
                g.append(Trajectory(prompt_ids=list(p), completion_ids=comp, forced=forced))
            groups.append(g)
        flat = [t for g in groups for t in g]
        if old_logprobs:
            was_training = self.model.training
            self.model.eval()
            try:
                with torch.no_grad():
                    lps = completion_logprobs(self.model, flat, temperature, pad_id=self.pad_id,
                                              batch_size=self.logprob_batch_size)
            finally:
                self.model.train(was_training)
            for t, lp in zip(flat, lps):
                t.old_logprobs = lp.detach().float().cpu()
        n_tok = sum(len(t.completion_ids) for t in flat)
        self.last_stats = {"gen_s": gen_s, "total_s": time.perf_counter() - t0, "tokens": float(n_tok),
                           "tokens_per_s": n_tok / max(gen_s, 1e-9),
                           "forced_frac": sum(t.forced for t in flat) / max(len(flat), 1)}
        return groups

    def __del__(self):  # pragma: no cover
        if getattr(self, "_lora_dir", None):
            shutil.rmtree(self._lora_dir, ignore_errors=True)


def make_engine(kind: str, model, tokenizer, cfg=None, **kwargs):
    """``"hf"`` → :class:`HFRolloutEngine`; ``"vllm"`` → :class:`VLLMRolloutEngine`.

    vLLM needs ``model_path=`` (the backbone cache dir); ``max_lora_rank`` defaults to the smallest rank vLLM
    accepts that is ≥ lora.r. ``cfg`` (RecpoCfg) is accepted for future options and not needed now.
    """
    from r2ec.llm.backbone import answer_token_id

    aid = answer_token_id(tokenizer)
    if kind == "hf":
        return HFRolloutEngine(model, tokenizer, aid, **kwargs)
    if kind == "vllm":
        return VLLMRolloutEngine(model, tokenizer, aid, **kwargs)
    raise ValueError(f"recpo.engine: unknown rollout engine {kind!r} (use 'hf' or 'vllm')")
