"""HF rollouts: seeded determinism, stop at <answer>, forced <answer>, old log-probs; vLLM import guard."""

from __future__ import annotations

import builtins

import pytest
import torch

from r2ec.llm.backbone import answer_token_id
from r2ec.llm.rollout import (Trajectory, completion_logprobs, finish_completion,
                              make_engine)
from r2ec.llm.tiny import tiny_model_and_tokenizer


def _setup(bias_answer: float = 0.0):
    model, tok = tiny_model_and_tokenizer()
    aid = answer_token_id(tok)
    if bias_answer:
        with torch.no_grad():  # make <answer> likely: tied embeddings, so bump the output row via a bias
            model.lm_head.bias = torch.nn.Parameter(torch.zeros(len(tok)))
            model.lm_head.bias[aid] = bias_answer
    prompts = [tok.encode(t, add_special_tokens=False) for t in ("user one history", "u2")]
    return model, tok, aid, prompts


def test_seeded_determinism_and_shapes():
    model, tok, aid, prompts = _setup()
    eng = make_engine("hf", model, tok)
    a = eng.generate(prompts, group_size=3, temperature=1.5, top_k=50, max_new_tokens=8, seed=7)
    b = eng.generate(prompts, group_size=3, temperature=1.5, top_k=50, max_new_tokens=8, seed=7)
    c = eng.generate(prompts, group_size=3, temperature=1.5, top_k=50, max_new_tokens=8, seed=8)
    assert len(a) == 2 and all(len(g) == 3 for g in a)
    ca = [t.completion_ids for g in a for t in g]
    assert ca == [t.completion_ids for g in b for t in g]
    assert ca != [t.completion_ids for g in c for t in g]
    for p, g in zip(prompts, a):
        for t in g:
            assert t.prompt_ids == p and t.completion_ids[-1] == aid
            assert aid not in t.completion_ids[:-1] and 1 <= len(t.completion_ids) <= 9
            assert t.old_logprobs.shape == (len(t.completion_ids),) and t.old_logprobs.dtype == torch.float32
            assert (t.old_logprobs <= 0).all()
    # the group members differ (sampling, not copies)
    assert len({tuple(t.completion_ids) for t in a[0]}) > 1
    assert eng.last_stats["tokens"] > 0


def test_stops_at_answer():
    model, tok, aid, prompts = _setup(bias_answer=30.0)
    groups = make_engine("hf", model, tok).generate(prompts, 2, 1.0, 0, 16, seed=0)
    for g in groups:
        for t in g:
            assert t.completion_ids == [aid] and not t.forced


def test_forced_answer_when_never_emitted():
    model, tok, aid, prompts = _setup(bias_answer=-1e4)
    groups = make_engine("hf", model, tok).generate(prompts, 2, 1.0, 20, 5, seed=0)
    for g in groups:
        for t in g:
            if t.forced and len(t.completion_ids) == 6:
                assert t.completion_ids[-1] == aid and aid not in t.completion_ids[:-1]
            assert t.forced  # <answer> never sampled: either appended or replacing EOS


def test_finish_completion_rules():
    assert finish_completion([5, 6, 9, 7], answer_id=9, stop_ids=[2]) == ([5, 6, 9], False)
    assert finish_completion([5, 2, 7], answer_id=9, stop_ids=[2]) == ([5, 9], True)
    assert finish_completion([5, 6], answer_id=9, stop_ids=[2]) == ([5, 6, 9], True)


def test_old_logprobs_match_recomputation_and_grad():
    model, tok, aid, prompts = _setup()
    groups = make_engine("hf", model, tok).generate(prompts, 2, 1.5, 50, 6, seed=3)
    flat = [t for g in groups for t in g]
    with torch.no_grad():
        again = completion_logprobs(model, flat, 1.5, pad_id=tok.pad_token_id, batch_size=1)
    for t, lp in zip(flat, again):
        assert torch.allclose(t.old_logprobs, lp, atol=1e-5)
    # direct per-sequence computation (no padding) agrees, and temperature divides the logits
    t = flat[0]
    with torch.no_grad():
        logits = model(torch.tensor([t.ids])).logits[0].float()
    n = len(t.completion_ids)
    ref = torch.log_softmax(logits[-n - 1:-1] / 1.5, -1).gather(1, torch.tensor(t.completion_ids)[:, None])[:, 0]
    assert torch.allclose(t.old_logprobs, ref, atol=1e-5)
    # with grad + pooled hidden from the same pass
    lps, hid = completion_logprobs(model, [(t.prompt_ids, t.completion_ids)], 1.5, return_hidden=True,
                                   answer_id=aid)
    (lps[0].sum() + hid.sum()).backward()
    assert hid.shape == (1, model.config.hidden_size)
    assert model.model.embed_tokens.weight.grad is not None


def test_trajectory_helpers():
    _, tok = tiny_model_and_tokenizer()
    aid = answer_token_id(tok)
    t = Trajectory([1, 2], tok.encode("hi", add_special_tokens=False) + [aid])
    assert t.ids[:2] == [1, 2] and t.reasoning_text(tok) == "hi"


def test_vllm_import_guard(monkeypatch):
    real_import = builtins.__import__

    def fake(name, *a, **k):
        if name == "vllm" or name.startswith("vllm."):
            raise ImportError("No module named 'vllm'")
        return real_import(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", fake)
    model, tok = tiny_model_and_tokenizer()
    with pytest.raises(ImportError, match=r"r2ec\[gpu\]"):
        make_engine("vllm", model, tok, model_path="/nonexistent")
    with pytest.raises(ValueError, match="unknown rollout engine"):
        make_engine("nope", model, tok)


def test_greedy_and_peft_model_mode_restored():
    from r2ec.config import LoraCfg
    from r2ec.llm.backbone import add_lora

    model, tok, aid, prompts = _setup()
    pm = add_lora(model, LoraCfg(r=2, alpha=4, dropout=0.1), seed=0)
    req = {n: p.requires_grad for n, p in pm.named_parameters()}
    pm.train()
    eng = make_engine("hf", pm, tok)
    g1 = eng.generate(prompts, 1, 0.0, 0, 6, seed=1)
    g2 = eng.generate(prompts, 1, 0.0, 0, 6, seed=2)
    assert [t.completion_ids for g in g1 for t in g] == [t.completion_ids for g in g2 for t in g]
    assert pm.training
    assert req == {n: p.requires_grad for n, p in pm.named_parameters()}
    # greedy: the first completion token is the argmax of the next-token distribution
    with torch.no_grad():
        pm.eval()
        nxt = pm(torch.tensor([prompts[0]])).logits[0, -1].argmax().item()
    first = g1[0][0].completion_ids[0]
    assert first == nxt or (first == aid and nxt in (aid, tok.eos_token_id))


def test_vllm_lora_rank():
    from r2ec.config import LoraCfg
    from r2ec.llm.backbone import add_lora
    from r2ec.llm.rollout import vllm_lora_rank

    model, _ = tiny_model_and_tokenizer()
    assert vllm_lora_rank(model) == 16
    assert vllm_lora_rank(add_lora(model, LoraCfg(r=4, alpha=8, dropout=0.0))) == 8


def test_skip_old_logprobs():
    model, tok, aid, prompts = _setup()
    eng = make_engine("hf", model, tok)
    a = eng.generate(prompts, 2, 1.5, 50, 6, seed=3)
    b = eng.generate(prompts, 2, 1.5, 50, 6, seed=3, old_logprobs=False)
    assert [t.completion_ids for g in a for t in g] == [t.completion_ids for g in b for t in g]
    assert all(t.old_logprobs.numel() == 0 for g in b for t in g)


@pytest.mark.parametrize("bias", [0.0, 3.0, 30.0, -1e4])
def test_answer_hidden_from_the_generation_cache_equals_a_fresh_forward(bias):
    """The state at <answer> read off generation's KV cache equals a full forward over prompt + completion, for
    rows that stop early (their stop id and trailing pads masked), run to the limit (<answer> appended: its last
    reasoning id is not in the cache) or stop at once, at mixed prompt lengths (left pads)."""
    from r2ec.llm.encoder import hidden_at_answer

    model, tok, aid, prompts = _setup(bias_answer=bias)
    prompts = prompts + [tok.encode("a much longer third user history here", add_special_tokens=False)]
    eng = make_engine("hf", model, tok, batch_size=3)
    groups = eng.generate(prompts, 3, 1.5, 0, 7, seed=11, old_logprobs=False, answer_hidden=True)
    flat = [t for g in groups for t in g]
    lens = {len(t.completion_ids) for t in flat}
    with torch.no_grad():
        ref = hidden_at_answer(model, [t.ids for t in flat], aid, tok.pad_token_id, batch_size=len(flat)).float()
    got = torch.stack([t.answer_hidden for t in flat])
    assert torch.allclose(got, ref, atol=1e-5), (lens, (got - ref).abs().max())
    if bias == 3.0:
        assert len(lens) > 1  # the mixed case really mixes stopped and unfinished rows
    # without the option nothing extra is computed
    assert all(t.answer_hidden is None for g in eng.generate(prompts, 1, 0.0, 0, 4, seed=0) for t in g)


def test_group_samples_share_one_prefill_and_sample_as_without_it(monkeypatch):
    """G samples of a prompt continue from one shared prefill: same seeded trajectories and old log-probs as G
    separate prefills, for prompts of different lengths (left pads) and chunks of whole groups."""
    import r2ec.llm.rollout as R

    model, tok, aid, prompts = _setup(bias_answer=2.0)
    prompts = prompts + [tok.encode("a much longer third user history here", add_special_tokens=False)]
    calls = []
    real = R.shared_prefill
    monkeypatch.setattr(R, "shared_prefill", lambda *a: calls.append(len(a[1])) or real(*a))
    eng = make_engine("hf", model, tok, batch_size=4)  # 4 sequences per call, rounded down to whole groups of 3
    shared = eng.generate(prompts, 3, 1.5, 20, 6, seed=5)
    assert calls == [1, 1, 1]  # batch 4 // G 3 = one user per generate call, one prefill each
    monkeypatch.setattr(R, "shared_prefill", lambda *a: None)
    plain = eng.generate(prompts, 3, 1.5, 20, 6, seed=5)
    for gs, gp in zip(shared, plain):
        for a, b in zip(gs, gp):
            assert a.completion_ids == b.completion_ids and a.forced == b.forced
            assert torch.allclose(a.old_logprobs, b.old_logprobs, atol=1e-5)


@pytest.mark.parametrize("group_size,temperature,bias", [(1, 0.0, 0.0), (1, 0.0, 2.0), (3, 1.5, 2.0)])
def test_shared_prefix_prefill_generates_as_the_plain_prefill(group_size, temperature, bias):
    """``shared_prefix``: the prompts' common prefix prefilled once, each suffix left-padded after it. Same seeded
    trajectories, old log-probs and <answer> states as the plain left-padded prefill, for suffixes of different
    lengths (pads between prefix and suffix), rows that stop early or run to the limit, and one-id suffixes."""
    from r2ec.llm.encoder import shared_prefix_len

    model, tok, aid, _ = _setup(bias_answer=bias)
    head = tok.encode("system: recommend the next item for this user history", add_special_tokens=False)
    tails = ["one", "a much longer second history here", "u3 x"]
    prompts = [head + tok.encode(t, add_special_tokens=False) for t in tails] + [head + [aid]]
    assert shared_prefix_len(prompts) == len(head)
    runs = []
    for shared in (False, True):
        eng = make_engine("hf", model, tok, shared_prefix=shared)
        runs.append(eng.generate(prompts, group_size, temperature, 20, 6, seed=9, answer_hidden=True))
    lens = set()
    for gp, gs in zip(*runs):
        for a, b in zip(gp, gs):
            lens.add(len(a.completion_ids))
            assert a.completion_ids == b.completion_ids and a.forced == b.forced
            assert torch.allclose(a.old_logprobs, b.old_logprobs, atol=1e-5)
            assert torch.allclose(a.answer_hidden, b.answer_hidden, atol=1e-5)
    if group_size > 1:
        assert len(lens) > 1  # early stops and full-length rows both occur


def test_shared_prefix_prefill_without_a_common_prefix():
    """No common prefix (and one-id prompts: nothing to prefill) still generates as the plain path does."""
    model, tok, aid, prompts = _setup()
    for ps in (prompts, [[5], [7]]):
        a = make_engine("hf", model, tok).generate(ps, 2, 1.5, 20, 5, seed=4)
        b = make_engine("hf", model, tok, shared_prefix=True).generate(ps, 2, 1.5, 20, 5, seed=4)
        assert [t.completion_ids for g in a for t in g] == [t.completion_ids for g in b for t in g]
