"""KV-cache prefills of the HF rollout engine (:class:`r2ec.llm.rollout.HFRolloutEngine`): a group's prompt
prefilled once for its G samples, the prompts' common prefix prefilled once per call, and the decoder state at
``<answer>`` read off a generation's own cache."""

from __future__ import annotations

import torch

from r2ec.llm.encoder import pad_left


def shared_prefill(model, prompts: list[list[int]], group_size: int, pad_id: int):
    """KV cache of every prompt but its last id, computed once per prompt and repeated ``group_size`` times.

    ``generate`` continues from it (it feeds only the uncached last id), so G samples of one user cost one
    prefill instead of G. Positions follow generate's own numbering (the mask's cumulative sum), and the prompts
    are left-padded to a common length exactly as :func:`pad_left` pads the repeated batch. It is
    :func:`prefix_prefill` without a common prefix (callers pass prompts of at least two ids in all).
    """
    return prefix_prefill(model, prompts, group_size, pad_id, common=False)[2]


def prefix_prefill(model, prompts: list[list[int]], group_size: int, pad_id: int, common: bool = True):
    """``(input_ids, attention_mask, cache)`` for ``generate`` on ``group_size`` samples of each prompt, prefilled
    with the prompts' common prefix (chat template + instruction, ~40% of a user prompt) computed once
    (``common=False``: no prefix is shared, every prompt is prefilled whole).

    Layout per row: the prefix, then the row's own suffix left-padded to the longest suffix (the mask zeroes
    the pads between them), then generation. The cache holds every position but the last prompt id, as
    ``generate`` expects (:func:`shared_prefill`); positions are the mask's cumulative sum, generate's own
    numbering, so each row's states equal a plain left-padded generation's up to float rounding. Each user's
    suffix is prefilled once and its cache repeated ``group_size`` times.
    """
    from r2ec.llm.encoder import decoder_of, prefix_cache, shared_prefix_len

    dev = next(model.parameters()).device
    P = shared_prefix_len(prompts) if common else 0  # every prompt keeps at least one suffix id
    suf, suf_mask, suf_pos = pad_left([p[P:] for p in prompts], pad_id, dev)
    B = len(prompts)
    head = torch.as_tensor([prompts[0][:P]], dtype=torch.long, device=dev)
    cache = prefix_cache(model, head)
    if P:
        cache.batch_repeat_interleave(B)
    ids = torch.cat([head.expand(B, P), suf], 1)
    mask = torch.cat([torch.ones((B, P), dtype=torch.long, device=dev), suf_mask], 1)
    if suf.shape[1] > 1:
        decoder_of(model)(input_ids=suf[:, :-1], attention_mask=mask[:, :-1], position_ids=P + suf_pos[:, :-1],
                          past_key_values=cache, use_cache=True)
    if int(cache.get_seq_length()) == 0:  # one-id prompts: nothing to prefill, generate starts from scratch
        cache = None
    elif group_size > 1:
        cache.batch_repeat_interleave(group_size)
    return ids.repeat_interleave(group_size, 0), mask.repeat_interleave(group_size, 0), cache


def answer_states(model, cache, sequences: torch.Tensor, prompt_mask: torch.Tensor, n_reasoning: list[int],
                  answer_id: int, pad_id: int) -> torch.Tensor:
    """Decoder states ``[B, H]`` at ``<answer>`` right after each row's reasoning, from a generation's KV cache.

    ``sequences`` ``[B, T + L]`` = left-padded prompts (``prompt_mask`` ``[B, T]``) + L generated ids; ``cache``
    holds the first ``C`` positions (``C = T + L - 1`` for HF generate: the last sampled id is never fed). Row
    ``i`` keeps its first ``n_reasoning[i]`` generated ids; the ids it does not keep (its stop id and the pads
    of a finished row) are masked out of attention, its kept ids that the cache lacks are fed again, then
    ``<answer>`` at the position it would have in a fresh forward (generate numbers positions by the mask's
    cumulative sum). Equal to ``hidden_at_answer`` on prompt + reasoning + ``<answer>`` up to float rounding.
    """
    from r2ec.llm.encoder import decoder_of

    T = prompt_mask.shape[1]
    C = int(cache.get_seq_length())
    dev = sequences.device
    in_cache = [min(n, C - T) for n in n_reasoning]
    feed = [sequences[i, T + c:T + n].tolist() + [answer_id] for i, (c, n) in enumerate(zip(in_cache, n_reasoning))]
    M = max(len(f) for f in feed)
    new = torch.full((len(feed), M), pad_id, dtype=torch.long, device=dev)
    mask = torch.zeros((len(feed), C + M), dtype=torch.long, device=dev)
    mask[:, :T] = prompt_mask
    for i, (c, f) in enumerate(zip(in_cache, feed)):
        new[i, :len(f)] = torch.as_tensor(f, dtype=torch.long, device=dev)
        mask[i, T:T + c] = 1
        mask[i, C:C + len(f)] = 1
    start = prompt_mask.sum(1, keepdim=True) + torch.as_tensor(in_cache, device=dev)[:, None]
    pos = start + torch.arange(M, device=dev)[None, :]
    h = decoder_of(model)(input_ids=new, attention_mask=mask, position_ids=pos, past_key_values=cache,
                          use_cache=True).last_hidden_state
    return h[torch.arange(len(feed), device=dev), torch.as_tensor([len(f) - 1 for f in feed], device=dev)]
