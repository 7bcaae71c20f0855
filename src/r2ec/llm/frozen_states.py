"""Trajectories' hidden states below the first adapted layer, computed once per RecPO step (``llm.frozen_states``).

A RecPO step forwards the same G trajectories per user several times: the reward forward (old log-probs and
user vectors), the reference policy's log-probs (the adapter disabled), and ``recpo.mu`` update passes. With LoRA
on the last N decoder layers only (``lora.last_layers``), the layers below them give the same states in every one
of those passes, so they are computed once per step: each user's prompt once for its G trajectories, then the
completions on the prompt's KV cache. Every pass then runs only the adapted layers on those states
(:func:`r2ec.llm.frozen_prefix.adapted_hidden`, as item encodings do). The result
equals a full forward up to float rounding; the trainer checks that on its first step and falls back to full
forwards, with a warning, on a backbone where it does not hold (one that rescales ``inputs_embeds``, Gemma's
``sqrt(H)``). This is :mod:`r2ec.llm.frozen_prefix` for trajectories, whose prompts change every step.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from r2ec.llm.encoder import decoder_of, pad_left
from r2ec.llm.frozen_prefix import layer_range


@dataclass
class FrozenStates:
    """``states[i]``: ``[len(prompt_i) + len(completion_i), H]`` after layers ``[0, split)`` (no grad) of pair i."""
    split: int
    states: list[torch.Tensor]

    def subset(self, idx: list[int]) -> "FrozenStates":
        return FrozenStates(self.split, [self.states[i] for i in idx])


def _grouped(pairs: list, group: int) -> bool:
    """Whether ``pairs`` is user-major with ``group`` consecutive completions of one prompt."""
    if group < 1 or len(pairs) % group:
        return False
    return all(pairs[k][0] == pairs[k - k % group][0] for k in range(len(pairs)))


def build_states(model, split: int, pairs: list, group: int, pad_id: int, batch_size: int = 16) -> FrozenStates:
    """States after layers ``[0, split)`` of every (prompt ids, completion ids) pair, no grad.

    With ``pairs`` user-major in groups of ``group`` sharing a prompt, each prompt runs once and its KV cache is
    repeated for its completions (``batch_size`` trajectories per chunk); otherwise each pair runs whole.
    Positions follow :func:`r2ec.llm.encoder.pad_left` (0 at each row's first real id), as a full forward's.
    """
    dec = decoder_of(model)
    dev = dec.embed_tokens.weight.device
    G = group if _grouped(pairs, group) else 1
    per = max(1, batch_size // G)  # prompts per chunk
    out: list[torch.Tensor] = []
    with torch.no_grad(), layer_range(model, 0, split, final_norm=False):
        for s in range(0, len(pairs) // G, per):
            users = range(s, min(s + per, len(pairs) // G))
            prompts = [list(pairs[u * G][0]) for u in users]
            comps = [list(pairs[u * G + g][1]) for u in users for g in range(G)]
            ids, mask, pos = pad_left(prompts, pad_id, dev)
            o = dec(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True)
            hp, cache = o.last_hidden_state, o.past_key_values
            if G > 1:
                cache.batch_repeat_interleave(G)
            M = max(len(c) for c in comps)
            new = torch.full((len(comps), M), pad_id, dtype=torch.long, device=dev)
            cmask = torch.zeros((len(comps), M), dtype=torch.long, device=dev)
            for j, c in enumerate(comps):
                new[j, :len(c)] = torch.as_tensor(c, dtype=torch.long, device=dev)
                cmask[j, :len(c)] = 1
            # right-padded completions: a pad follows every real id of its row, so causal attention never sees it
            cpos = mask.sum(1).repeat_interleave(G)[:, None] + torch.arange(M, device=dev)[None, :]
            hc = dec(input_ids=new, attention_mask=torch.cat([mask.repeat_interleave(G, 0), cmask], 1),
                     position_ids=cpos, past_key_values=cache, use_cache=True).last_hidden_state
            T = ids.shape[1]
            for j, c in enumerate(comps):
                p = prompts[j // G]
                out.append(torch.cat([hp[j // G, T - len(p):], hc[j, :len(c)]], 0))
    return FrozenStates(split, out)

