"""Encode prompts into vectors (hidden state at ``<answer>``), the item table, cosine scores.

Vectors are the decoder's last hidden state (after the final norm, i.e. ``hidden_states[-1]`` of HF) at the
last ``<answer>`` token. Only the decoder runs (no LM head), so no [B, T, vocab] logits are built.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import polars as pl
import torch

from r2ec.io import atomic_path

log = logging.getLogger(__name__)


def decoder_of(model):
    """The transformer body (``LlamaModel``) of a causal LM, also through a PEFT wrapper (LoRA layers kept)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if hasattr(base, "get_decoder"):
        dec = base.get_decoder()
        if dec is not None:
            return dec
    return base.model


def pad_left(seqs: list[list[int]], pad_id: int, device: Any = None):
    """Left-pad id lists → ``(input_ids, attention_mask, position_ids)`` [B, T] (positions start at 0 per row)."""
    T = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), T), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), T), dtype=torch.long)
    for i, s in enumerate(seqs):
        if s:
            ids[i, T - len(s):] = torch.as_tensor(s, dtype=torch.long)
            mask[i, T - len(s):] = 1
    pos = (mask.cumsum(1) - 1).clamp(min=0)
    if device is not None:
        ids, mask, pos = ids.to(device), mask.to(device), pos.to(device)
    return ids, mask, pos


def last_hidden(model, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                position_ids: torch.Tensor | None = None) -> torch.Tensor:
    """Decoder last hidden state [B, T, H] (grad flows if enabled by the caller)."""
    if position_ids is None:
        position_ids = (attention_mask.long().cumsum(1) - 1).clamp(min=0)
    out = decoder_of(model)(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                            use_cache=False)
    return out.last_hidden_state


def hidden_at_answer(model, input_ids_list: list[list[int]], token_id: int, pad_id: int,
                     batch_size: int = 16) -> torch.Tensor:
    """Hidden state at the last ``token_id`` of each sequence → [B, H] (float32 is NOT forced; model dtype).

    Sequences are left-padded per mini-batch with explicit position ids. Gradients flow when enabled (use
    ``torch.no_grad()`` around it for inference).
    """
    from r2ec.llm.pooling import pool_at_last

    dev = next(model.parameters()).device
    outs = []
    for s in range(0, len(input_ids_list), batch_size):
        chunk = input_ids_list[s:s + batch_size]
        ids, mask, pos = pad_left(chunk, pad_id, dev)
        h = last_hidden(model, ids, mask, pos)
        outs.append(pool_at_last(h, ids, token_id))
    return torch.cat(outs, 0)


def shared_prefix_len(seqs: list[list[int]]) -> int:
    """Length of the id prefix every sequence shares, capped one short of the shortest (each keeps a suffix)."""
    if not seqs:
        return 0
    first, n = seqs[0], min(len(s) for s in seqs) - 1
    for s in seqs[1:]:
        k = 0
        while k < n and s[k] == first[k]:
            k += 1
        n = k
    return max(n, 0)


def prefix_cache(model, prefix_ids: torch.Tensor):
    """A ``DynamicCache`` holding the KV states of one id row ``prefix_ids`` ``[1, P]`` at positions ``0..P-1``
    (empty when ``P == 0``): the shared part of user prompts, computed once and then repeated per row."""
    from transformers import DynamicCache

    cache = DynamicCache(config=model.config)
    P = prefix_ids.shape[1]
    if P:
        dev = prefix_ids.device
        decoder_of(model)(input_ids=prefix_ids, attention_mask=torch.ones((1, P), dtype=torch.long, device=dev),
                          position_ids=torch.arange(P, device=dev)[None], past_key_values=cache, use_cache=True)
    return cache


def hidden_at_answer_shared(model, input_ids_list: list[list[int]], token_id: int, pad_id: int,
                            batch_size: int = 16) -> torch.Tensor:
    """:func:`hidden_at_answer` for sequences that share a prefix (user prompts share the chat template and the
    instruction, ~40% of a 128-token prompt): the prefix's KV cache is computed once, then each mini-batch runs only
    its right-padded suffixes on top of a copy of it. Causal attention makes the states at ``<answer>`` the full
    forward's up to float rounding. No-grad use only (the cache is computed once, outside any graph)."""
    import copy

    from r2ec.llm.pooling import pool_at_last

    P = shared_prefix_len(input_ids_list)
    if P == 0:
        return hidden_at_answer(model, input_ids_list, token_id, pad_id, batch_size)
    dev = next(model.parameters()).device
    dec = decoder_of(model)
    prefix = prefix_cache(model, torch.as_tensor([input_ids_list[0][:P]], device=dev))
    outs = []
    for s in range(0, len(input_ids_list), batch_size):
        chunk = [seq[P:] for seq in input_ids_list[s:s + batch_size]]
        S = max(len(c) for c in chunk)
        ids = torch.full((len(chunk), S), pad_id, dtype=torch.long)
        mask = torch.zeros((len(chunk), P + S), dtype=torch.long)
        mask[:, :P] = 1
        for i, c in enumerate(chunk):  # right-padded: a row's pads come after its <answer>, which never sees them
            ids[i, :len(c)] = torch.as_tensor(c, dtype=torch.long)
            mask[i, P:P + len(c)] = 1
        cache = copy.deepcopy(prefix)
        cache.batch_repeat_interleave(len(chunk))
        ids, mask = ids.to(dev), mask.to(dev)
        pos = (P + torch.arange(S, device=dev))[None].expand(len(chunk), S)
        h = dec(input_ids=ids, attention_mask=mask, position_ids=pos, past_key_values=cache,
                use_cache=True).last_hidden_state
        outs.append(pool_at_last(h, ids, token_id))
    return torch.cat(outs, 0)


def item_prompt_ids(tokenizer, items: pl.DataFrame, domain: str, system_prompt: str = "",
                    max_description_words: int = 100) -> list[list[int]]:
    """Rendered item prompts (ending in ``<answer>``) in items.parquet order."""
    from r2ec.llm.prompts import item_messages, render_item
    return [render_item(tokenizer, item_messages(row, domain, max_description_words=max_description_words),
                        system_prompt) for row in items.iter_rows(named=True)]


def encode_items(model, tokenizer, items: pl.DataFrame, domain: str, cfg, batch_size: int = 16,
                 progress: bool = True, *, prompt_ids: list[list[int]] | None = None,
                 shard: tuple[int, int] | None = None) -> torch.Tensor:
    """Item table [N+1, H] float32 on CPU: row ``item_id`` = vector of that item, row 0 = zeros (pad).

    ``cfg``: LlmCfg (system_prompt). Runs under no_grad in eval mode (the previous mode is restored).
    Prompts are length-sorted into batches to cut padding. ``prompt_ids`` reuses pre-rendered prompts.
    ``shard=(rank, n)`` encodes only the batches ``b % n == rank`` (the other rows stay 0): the N shards summed
    are the whole table, each row computed in the very batch one process computes it in.
    """
    from r2ec.llm.backbone import answer_token_id

    ids_list = prompt_ids if prompt_ids is not None else item_prompt_ids(
        tokenizer, items, domain, getattr(cfg, "system_prompt", ""))
    if items.height and items["item_id"].to_list() != list(range(1, items.height + 1)):
        raise ValueError("items.item_id must be dense 1..N in order")
    aid = answer_token_id(tokenizer)
    order = sorted(range(len(ids_list)), key=lambda i: len(ids_list[i]))
    H = model.config.hidden_size
    table = torch.zeros((len(ids_list) + 1, H), dtype=torch.float32)
    was_training = model.training
    model.eval()
    t0 = time.perf_counter()
    try:
        with torch.no_grad():
            for b, s in enumerate(range(0, len(order), batch_size)):
                if shard is not None and b % shard[1] != shard[0]:
                    continue
                idx = order[s:s + batch_size]
                v = hidden_at_answer(model, [ids_list[i] for i in idx], aid, tokenizer.pad_token_id, batch_size)
                table[torch.as_tensor(idx) + 1] = v.float().cpu()
                if progress and (b % 20 == 0 or s + batch_size >= len(order)):
                    done = min(s + batch_size, len(order))
                    el = time.perf_counter() - t0
                    log.info("encode_items %d/%d (%.1f items/s)", done, len(order), done / max(el, 1e-9))
    finally:
        model.train(was_training)
    return table


def save_item_table(path: str | Path, table: torch.Tensor, meta: dict | None = None) -> None:
    """Atomically save ``{"table": [N+1,H] float32, "meta": {...}}`` with torch.save."""
    with atomic_path(path) as tmp:
        torch.save({"table": table.detach().float().cpu().contiguous(), "meta": dict(meta or {})}, tmp)


def load_item_table(path: str | Path) -> tuple[torch.Tensor, dict]:
    """Inverse of :func:`save_item_table` → ``(table, meta)``."""
    obj = torch.load(path, map_location="cpu", weights_only=True)
    return obj["table"], obj["meta"]


def table_center(table: torch.Tensor) -> torch.Tensor:
    """Mean of the item vectors (rows 1..N of an item table; row 0 is the pad) → [H] float32."""
    return table[1:].float().mean(0)


def split_center(center: torch.Tensor | None, like: torch.Tensor) -> tuple[Any, Any]:
    """``(c_user, c_item)`` of a centre: ``[H]`` centres both sides on one vector, ``[2, H]`` holds the user
    centre (row 0) and the item centre (row 1); None = ``(0, 0)``."""
    if center is None:
        return 0.0, 0.0
    c = center.to(like.device).float()
    return (c[0], c[1]) if c.dim() == 2 else (c, c)


def cosine_scores(user: torch.Tensor, items: torch.Tensor, tau: float,
                  center: torch.Tensor | None = None) -> torch.Tensor:
    """cos(user_b − c_u, item_j − c_i) / τ → [B, N+1] float32, column 0 (pad item) = -inf. Differentiable.

    ``(c_u, c_i)`` from ``center`` (:func:`split_center`: one ``[H]`` vector, e.g. :func:`table_center`, for
    both sides, or ``[2, H]`` user and item centres) or 0. Centring is parameter-free: an untrained LM's vectors
    share one dominant direction (SmolLM2: mean pairwise cosine 0.98), which plain cosine spends its whole range
    on; subtracting the catalogue mean leaves the directions in which items differ, subtracting the mean user
    vector the directions in which users differ.
    """
    from r2ec.llm.backbone import float32_scope
    with float32_scope(user):
        cu, ci = split_center(center, user)
        u = torch.nn.functional.normalize(user.float() - cu, dim=-1)
        it = torch.nn.functional.normalize(items.float() - ci, dim=-1)
        s = (u @ it.T) / tau
    pad = torch.zeros(s.shape[1], dtype=torch.bool, device=s.device)
    pad[0] = True
    return s.masked_fill(pad, float("-inf"))
