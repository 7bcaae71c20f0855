"""Grouped-query decode attention: the same generation as transformers' sdpa, without the per-head KV copies."""

from __future__ import annotations

import copy

import torch

from r2ec.llm.attention import NAME, use_grouped_decode
from r2ec.llm.rollout import make_engine
from r2ec.llm.tiny import tiny_model_and_tokenizer


def test_grouped_decode_generates_as_sdpa(monkeypatch):
    """Mixed prompt lengths (left pads in the mask), sampled groups and greedy rows; float32 so equal up to rounding:
    the same tokens, old log-probs and <answer> states as the stock sdpa path."""
    model, tok = tiny_model_and_tokenizer()
    assert model.config.num_key_value_heads < model.config.num_attention_heads  # really grouped
    grouped = copy.deepcopy(model)
    assert use_grouped_decode(grouped) and grouped.config._attn_implementation == NAME
    assert model.config._attn_implementation == "sdpa"
    prompts = [tok.encode(t, add_special_tokens=False) for t in ("user one history", "u2", "a much longer third one")]
    real, heads = torch.nn.functional.scaled_dot_product_attention, []
    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention",
                        lambda q, *a, **k: heads.append(q.shape[1]) or real(q, *a, **k))
    for G, temp in ((3, 1.5), (1, 0.0)):
        a = make_engine("hf", model, tok).generate(prompts, G, temp, 20, 6, seed=2, answer_hidden=True)
        heads.clear()
        b = make_engine("hf", grouped, tok).generate(prompts, G, temp, 20, 6, seed=2, answer_hidden=True)
        assert model.config.num_key_value_heads in heads  # the decode steps took the grouped path
        for x, y in zip([t for g in a for t in g], [t for g in b for t in g]):
            assert x.completion_ids == y.completion_ids
            assert torch.allclose(x.old_logprobs, y.old_logprobs, atol=1e-5)
            assert torch.allclose(x.answer_hidden, y.answer_hidden, atol=1e-5)


def test_grouped_decode_leaves_full_forwards_and_gradients_alone():
    """Multi-token forwards (training, prefill) run the stock sdpa function: same logits and gradients."""
    model, tok = tiny_model_and_tokenizer()
    grouped = copy.deepcopy(model)
    use_grouped_decode(grouped)
    ids = torch.as_tensor([tok.encode("one two three four", add_special_tokens=False)])
    outs = []
    for m in (model, grouped):
        m.zero_grad()
        logits = m(input_ids=ids).logits
        logits.sum().backward()
        outs.append((logits.detach(), m.lm_head.weight.grad.clone()))
    assert torch.allclose(outs[0][0], outs[1][0], atol=1e-6) and torch.allclose(outs[0][1], outs[1][1], atol=1e-5)


def test_grouped_decode_skips_models_without_grouped_heads():
    model, _ = tiny_model_and_tokenizer()
    model.config.num_key_value_heads = model.config.num_attention_heads
    assert not use_grouped_decode(model) and model.config._attn_implementation == "sdpa"


def test_grouped_decode_beam_search_as_sdpa():
    """Beam search (BigRec / D³ decoding: the cache is reordered between steps) returns the same beams and scores."""
    model, tok = tiny_model_and_tokenizer()
    grouped = copy.deepcopy(model)
    use_grouped_decode(grouped)
    prompts = [tok.encode(t, add_special_tokens=False) for t in ("user one history", "a much longer third one")]
    from r2ec.llm.encoder import pad_left
    ids, mask, _ = pad_left(prompts, tok.pad_token_id)
    outs = [m.generate(input_ids=ids, attention_mask=mask, num_beams=4, num_return_sequences=4, do_sample=False,
                       max_new_tokens=6, output_scores=True, return_dict_in_generate=True,
                       pad_token_id=tok.pad_token_id) for m in (model, grouped)]
    assert torch.equal(outs[0].sequences, outs[1].sequences)
    assert torch.allclose(outs[0].sequences_scores, outs[1].sequences_scores, atol=1e-5)
