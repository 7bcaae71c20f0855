"""The paper's backbones, Gemma-2 and Qwen-2.5, on tiny random models: chat rendering (Gemma's template has no
system role), log-probs equal to the model's own forward (Gemma-2's final-logit softcapping included), the
``<answer>`` state machinery, and the grouped-decode attention bypass."""

from __future__ import annotations

import copy
import logging

import pytest
import torch

from r2ec.errors import UserError
from r2ec.llm import attention
from r2ec.llm.attention import NAME, use_grouped_decode
from r2ec.llm.backbone import ANSWER, answer_token_id, exact_attention, lm_logits, logit_softcap
from r2ec.llm.encoder import decoder_of, hidden_at_answer, hidden_at_answer_shared
from r2ec.llm.prompts import fold_system, render_item, render_prompt, render_text, user_messages
from r2ec.llm.rollout import completion_logprobs, make_engine
from r2ec.llm.tiny import (tiny_gemma2_and_tokenizer, tiny_model_and_tokenizer, tiny_qwen2_and_tokenizer,
                           tiny_tokenizer)

MSGS = [{"role": "user", "content": "hi"}]
BUILDERS = {"gemma2": tiny_gemma2_and_tokenizer, "qwen2": tiny_qwen2_and_tokenizer}


# --- (a) rendering --------------------------------------------------------------------------------------------


def test_gemma_template_folds_the_system_prompt_into_the_first_user_turn():
    _, tok = tiny_gemma2_and_tokenizer()
    bos = tok.bos_token
    with pytest.raises(Exception, match="System role not supported"):  # the template really rejects it
        tok.apply_chat_template([{"role": "system", "content": "x"}] + MSGS, tokenize=False)
    assert render_text(tok, MSGS, "") == f"{bos}<start_of_turn>user\nhi<end_of_turn>\n<start_of_turn>model\n"
    assert render_text(tok, MSGS, "Be brief.") == (
        f"{bos}<start_of_turn>user\nBe brief.\n\nhi<end_of_turn>\n<start_of_turn>model\n")
    assert tok.decode(render_prompt(tok, MSGS, "Be brief.")) == render_text(tok, MSGS, "Be brief.")
    ids = render_item(tok, MSGS, "")
    assert ids[-1] == answer_token_id(tok) and tok.decode(ids).endswith("<start_of_turn>model\n" + ANSWER)
    # a real user prompt (several lines) renders, and the instruction is the first user text
    hist = [{"title": "A", "rating": 4.0, "timestamp": 100}, {"title": "B", "rating": 3.0, "timestamp": 200}]
    text = render_text(tok, user_messages(hist, 86_400 * 3, "movie"), "Sys.")
    assert text.startswith(f"{bos}<start_of_turn>user\nSys.\n\nAnalyze in depth")


def test_fold_system_keeps_the_other_turns():
    msgs = [{"role": "user", "content": "u"}, {"role": "assistant", "content": "a"}]
    assert fold_system(msgs, "S") == [{"role": "user", "content": "S\n\nu"}, {"role": "assistant", "content": "a"}]
    assert msgs[0]["content"] == "u"  # not mutated
    assert fold_system([{"role": "assistant", "content": "a"}], "S")[0] == {"role": "user", "content": "S"}


@pytest.mark.parametrize("build", [tiny_model_and_tokenizer, tiny_qwen2_and_tokenizer])
def test_chatml_rendering_is_unchanged(build):
    """ChatML templates (SmolLM2, Qwen2.5) still render a system message, and an empty one drops the default."""
    _, tok = build()
    assert render_text(tok, MSGS, "") == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    assert render_text(tok, MSGS, "Be brief.") == tok.apply_chat_template(
        [{"role": "system", "content": "Be brief."}] + MSGS, tokenize=False, add_generation_prompt=True)
    assert render_text(tok, MSGS, "Be brief.").startswith("<|im_start|>system\nBe brief.<|im_end|>\n")


def test_a_template_that_renders_nothing_is_a_user_error():
    tok = tiny_tokenizer("{{ raise_exception('nothing works') }}")
    for system in ("", "S"):
        with pytest.raises(UserError, match="llm.backbone .*chat template.*nothing works"):
            render_text(tok, MSGS, system)


# --- (b), (c) log-probs -----------------------------------------------------------------------------------------


def _forward_logprobs(model, traj) -> torch.Tensor:
    """log_softmax of the model's own forward logits at the completion tokens."""
    ids = torch.as_tensor([traj.ids])
    with torch.no_grad():
        lp = torch.log_softmax(model(input_ids=ids).logits[0].float(), -1)
    n, P = len(traj.completion_ids), len(traj.prompt_ids)
    return lp[P - 1:P + n - 1].gather(1, ids[0, P:, None]).squeeze(1)


def _prompts(tok):
    return [render_prompt(tok, user_messages([{"title": t, "rating": 4.0, "timestamp": 10}], 86_400, "movie"))
            for t in ("Alien", "The Long Goodbye of a Title")]


@pytest.mark.parametrize("family", sorted(BUILDERS))
def test_rollout_logprobs_are_the_model_forwards(family):
    """The engine's old log-probs (and completion_logprobs) equal log_softmax(model(ids).logits) at the sampled
    tokens: the PPO ratio is taken on the distribution generate samples from (Gemma-2: capped logits)."""
    model, tok = BUILDERS[family]()
    exact_attention(model)
    eng = make_engine("hf", model, tok)
    groups = eng.generate(_prompts(tok), group_size=2, temperature=1.0, top_k=0, max_new_tokens=6, seed=3)
    trajs = [t for g in groups for t in g]
    for t in trajs:
        assert torch.allclose(t.old_logprobs, _forward_logprobs(model, t), atol=1e-5, rtol=0)
    again = completion_logprobs(model, trajs, 1.0, pad_id=tok.pad_token_id)
    for t, lp in zip(trajs, again):
        assert torch.allclose(lp, t.old_logprobs, atol=1e-5, rtol=0)


def test_head_only_logits_are_not_gemmas_distribution():
    """What the code computed before: the output embeddings alone. With Gemma-2's cap they are another
    distribution (the old log-probs missed the forward's by far more than rounding); lm_logits is the forward's."""
    model, tok = tiny_gemma2_and_tokenizer(final_logit_softcapping=5.0)
    assert logit_softcap(model) == 5.0
    ids = torch.as_tensor([_prompts(tok)[0]])
    with torch.no_grad():
        h = decoder_of(model)(input_ids=ids).last_hidden_state
        ref = model(input_ids=ids).logits
        head_only = model.get_output_embeddings()(h)
        assert torch.allclose(lm_logits(model, h), ref, atol=1e-5, rtol=0)
        assert ref.abs().max() <= 5.0 and head_only.abs().max() > 5.0
        gap = (torch.log_softmax(head_only, -1) - torch.log_softmax(ref, -1)).abs().max()
    assert gap > 1e-2


@pytest.mark.parametrize("build", [tiny_model_and_tokenizer, tiny_qwen2_and_tokenizer])
def test_uncapped_backbones_logits_are_the_head_bit_for_bit(build):
    model, tok = build()
    assert logit_softcap(model) is None
    ids = torch.as_tensor([_prompts(tok)[1]])
    with torch.no_grad():
        h = decoder_of(model)(input_ids=ids).last_hidden_state
        assert torch.equal(lm_logits(model, h), model.get_output_embeddings()(h))
        assert torch.allclose(lm_logits(model, h), model(input_ids=ids).logits, atol=1e-5, rtol=0)


def test_gemma_logprobs_through_lora():
    from r2ec.config import LoraCfg
    from r2ec.llm.backbone import add_lora
    model, tok = tiny_gemma2_and_tokenizer()
    peft = add_lora(model, LoraCfg(), seed=0)
    assert logit_softcap(peft) == logit_softcap(model)
    t = make_engine("hf", peft, tok).generate(_prompts(tok)[:1], 1, 1.0, 0, 5, seed=1)[0][0]
    assert torch.allclose(t.old_logprobs, _forward_logprobs(peft, t), atol=1e-5, rtol=0)


# --- <answer> states, prefix sharing, attention -------------------------------------------------------------------


WINDOWED = {"qwen2": tiny_qwen2_and_tokenizer,
            "gemma2-window-4096": lambda: tiny_gemma2_and_tokenizer(sliding_window=4096, embed_std=0.05),  # 2B's
            "gemma2-window-16": lambda: tiny_gemma2_and_tokenizer(sliding_window=16, embed_std=0.05)}  # < prompts


@pytest.mark.parametrize("family", sorted(WINDOWED))
@pytest.mark.parametrize("shared", [False, True])
def test_answer_states_from_generation_match_a_forward(family, shared):
    """answer_hidden from generation's KV cache (with and without a shared prefix) equals hidden_at_answer on
    prompt + reasoning + <answer>, rows stopping at different steps (masked stop ids and pads in the cache). A
    sliding window shorter than the layout would count those masked slots: there the engine neither shares the
    prefix nor reads the cache (answer_hidden None: callers run a forward), and samples what a plain run samples."""
    model, tok = WINDOWED[family]()
    aid = answer_token_id(tok)
    with torch.no_grad():  # make <answer> likely so that rows finish at different steps
        model.lm_head.bias = torch.nn.Parameter(torch.zeros(len(tok)))
        model.lm_head.bias[aid] = 5.0
    prompts = _prompts(tok)
    binds = family == "gemma2-window-16"
    assert binds == (min(map(len, prompts)) > (model.config.sliding_window if "gemma" in family else 10 ** 9))
    eng = make_engine("hf", model, tok, shared_prefix=shared)
    trajs = [t for g in eng.generate(prompts, 3, 1.0, 0, 6, seed=4, answer_hidden=True) for t in g]
    assert len({len(t.completion_ids) for t in trajs}) > 1
    with torch.no_grad():
        ref = hidden_at_answer(model, [t.ids for t in trajs], aid, tok.pad_token_id).float()
        ref_shared = hidden_at_answer_shared(model, [t.ids for t in trajs], aid, tok.pad_token_id).float()
    assert torch.allclose(ref_shared, ref, atol=1e-4, rtol=0)
    if binds:
        assert all(t.answer_hidden is None for t in trajs)
        plain = make_engine("hf", model, tok).generate(prompts, 3, 1.0, 0, 6, seed=4)
        assert [t.completion_ids for g in plain for t in g] == [t.completion_ids for t in trajs]
        return
    got = torch.stack([t.answer_hidden for t in trajs])
    assert torch.allclose(got, ref, atol=1e-4, rtol=0)


def test_grouped_decode_keeps_gemmas_stock_attention(caplog):
    model, tok = tiny_gemma2_and_tokenizer()
    assert attention.unsupported(model) == "attention logit softcapping"
    attention._LOGGED.discard("attention logit softcapping")
    with caplog.at_level(logging.INFO, logger="r2ec.llm.attention"):
        assert not use_grouped_decode(model) and not use_grouped_decode(copy.deepcopy(model))
    assert model.config._attn_implementation == "sdpa"
    assert sum("keeps its stock attention" in r.getMessage() for r in caplog.records) == 1  # logged once
    uncapped, _ = tiny_gemma2_and_tokenizer(attn_logit_softcapping=None)
    assert attention.unsupported(uncapped) == "sliding-window attention layers"
    assert not use_grouped_decode(uncapped)


def test_grouped_decode_on_qwen_generates_as_sdpa():
    model, tok = tiny_qwen2_and_tokenizer()
    grouped = copy.deepcopy(model)
    assert attention.unsupported(model) is None
    assert use_grouped_decode(grouped) and grouped.config._attn_implementation == NAME
    prompts = _prompts(tok)
    a = make_engine("hf", model, tok).generate(prompts, 2, 1.0, 0, 5, seed=2)
    b = make_engine("hf", grouped, tok).generate(prompts, 2, 1.0, 0, 5, seed=2)
    for x, y in zip([t for g in a for t in g], [t for g in b for t in g]):
        assert x.completion_ids == y.completion_ids
        assert torch.allclose(x.old_logprobs, y.old_logprobs, atol=1e-5)


def test_exact_attention_puts_softcapped_attention_on_eager():
    model, _ = tiny_gemma2_and_tokenizer()
    assert exact_attention(model) and model.config._attn_implementation == "eager"
    assert not exact_attention(model)
    qwen, _ = tiny_qwen2_and_tokenizer()
    assert not exact_attention(qwen) and qwen.config._attn_implementation == "sdpa"


def test_frozen_prefix_on_gemma():
    """Gemma scales its embeddings inside the embedding module, so the upper layers run on saved states exactly."""
    from r2ec.llm.frozen_prefix import FrozenPrefix
    model, tok = tiny_gemma2_and_tokenizer()
    aid = answer_token_id(tok)
    items = [render_item(tok, [{"role": "user", "content": f"item {i} " * (i + 1)}]) for i in range(4)]
    fp = FrozenPrefix(model, 1, items, aid, tok.pad_token_id, batch_size=4)
    assert fp.ok
    with torch.no_grad():
        assert torch.allclose(fp.table(model)[1:], hidden_at_answer(model, items, aid, tok.pad_token_id).float(),
                              atol=1e-4, rtol=0)
