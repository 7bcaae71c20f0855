"""Grouped-query SDPA for one-token decode steps, registered as a ``transformers`` attention implementation.

``transformers``' ``sdpa`` attention repeats every key/value head ``H / H_kv`` times before calling
``scaled_dot_product_attention`` whenever a padding mask is passed (its ``enable_gqa`` path is kept for unmasked
CUDA calls). In a decode step of a left-padded batch that copies the whole KV cache, every layer, every token:
profiled on SmolLM2-135M (9 query heads, 3 KV heads, 64 rows, 24 greedy tokens, 1 CPU thread), the copies were
~15% of generation's time. A decode step has one query per head, so the ``H / H_kv`` query heads that share a KV
head can instead be stacked as that head's query rows: ``[B, H, 1, D] -> [B, H_kv, H / H_kv, D]`` attends the
unrepeated ``[B, H_kv, T, D]`` cache, and the row mask ``[B, 1, 1, T]`` broadcasts over the stacked rows. Same
softmax, same sums, no copy. Every other call (prefill, training forwards, several fed tokens) is the stock
``sdpa`` function.

It computes plain softmax attention only: a model whose attention soft-caps its scores (Gemma-2's
``attn_logit_softcapping``) or has sliding-window layers (Gemma-2's alternating local layers, Qwen-2 with
``use_sliding_window``) keeps its stock implementation (:func:`use_grouped_decode` logs that once per reason).
"""

from __future__ import annotations

import logging

import torch

log = logging.getLogger(__name__)

NAME = "r2ec_grouped_sdpa"
_LOGGED: set[str] = set()


def unsupported(model) -> str | None:
    """Why :func:`grouped_decode_sdpa` cannot stand in for ``model``'s attention (None: it can)."""
    from r2ec.llm.arch import sliding_window, text_config

    if getattr(text_config(model), "attn_logit_softcapping", None):
        return "attention logit softcapping"
    if sliding_window(model) is not None:
        return "sliding-window attention layers"
    return None


def grouped_decode_sdpa(module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                        attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                        is_causal: bool | None = None, **kwargs):
    """``attention(q, K, V) = softmax(q K^T * scaling + mask) V`` per head; one-token queries of grouped-query
    layers run with the query heads stacked per KV head (module docstring), anything else goes to ``sdpa``."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    groups = getattr(module, "num_key_value_groups", 1)
    B, H, Q, D = query.shape
    if groups == 1 or Q != 1 or dropout or kwargs.get("position_bias") is not None or kwargs.get("cache") is not None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      is_causal=is_causal, **kwargs)
    # head h reads KV head h // groups (transformers' repeat_kv), so consecutive query heads form one KV group
    q = query.reshape(B, H // groups, groups, D)
    mask = attention_mask[:, :, :, :key.shape[-2]] if attention_mask is not None else None
    out = torch.nn.functional.scaled_dot_product_attention(q, key, value, attn_mask=mask, scale=scaling)
    return out.reshape(B, H, 1, D).transpose(1, 2).contiguous(), None


def use_grouped_decode(model) -> bool:
    """Switch ``model`` (an ``sdpa`` grouped-query model) to :func:`grouped_decode_sdpa`; returns whether it did.
    Models on another attention implementation, without grouped KV heads, or with attention it does not compute
    (:func:`unsupported`: softcapping, sliding windows) are left as they are."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    cfg = model.config
    heads, kv = getattr(cfg, "num_attention_heads", 0), getattr(cfg, "num_key_value_heads", None)
    if cfg._attn_implementation not in ("sdpa", NAME) or not kv or heads == kv:
        return False
    why = unsupported(model)
    if why is not None:
        if why not in _LOGGED:
            _LOGGED.add(why)
            log.info("llm.grouped_decode: %s (%s) keeps its stock attention: grouped decode does not compute %s",
                     type(model).__name__, getattr(cfg, "model_type", "?"), why)
        return False
    AttentionInterface.register(NAME, grouped_decode_sdpa)
    AttentionMaskInterface.register(NAME, sdpa_mask)  # the masks sdpa gets
    model.set_attn_implementation(NAME)
    return True
