"""Facts of a causal LM's architecture that change how its logits and attention must be computed (Gemma-2's
final-logit and attention softcapping, sliding-window layers), read from its config. Used by the backbone loader,
the attention patch and the rollout engines alike."""

from __future__ import annotations


def text_config(model):
    """The config of the model's language part (the model's own config for a text-only causal LM)."""
    cfg = model.config
    get = getattr(cfg, "get_text_config", None)
    return get() if callable(get) else cfg


def logit_softcap(model) -> float | None:
    """The cap ``c`` of the model's final-logit softcapping (Gemma-2: ``logits = c * tanh(logits / c)`` inside its
    forward, ``config.final_logit_softcapping``), or None when its forward has none (Llama, Qwen-2)."""
    cap = getattr(text_config(model), "final_logit_softcapping", None)
    return float(cap) if cap else None


def sliding_window(model) -> int | None:
    """The attention window of the model's sliding-window layers (Gemma-2's local layers, Qwen-2 with
    ``use_sliding_window``), or None when every layer attends to the whole sequence."""
    cfg = text_config(model)
    w = getattr(cfg, "sliding_window", None)
    types = getattr(cfg, "layer_types", None) or ()
    sliding = any(t == "sliding_attention" for t in types) if types else getattr(cfg, "use_sliding_window", False)
    if w and sliding:
        return int(w)
    return None


def window_binds(model, n_slots: int) -> bool:
    """Whether a sliding window can cut a sequence laid out over ``n_slots`` cache slots. A window counts slots,
    not positions: a layout with masked slots between real tokens (a shared prefix, a finished row's stop id and
    pads) then lets a query see fewer real tokens than a plain forward does, unless all slots fit in the window."""
    w = sliding_window(model)
    return w is not None and n_slots > w
