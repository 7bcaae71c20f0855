"""The paper's backbones, Gemma-2 and Qwen-2.5, on tiny random models: chat rendering (Gemma's template has no
system role)."""

from __future__ import annotations

import copy
import logging

import pytest

from r2ec.errors import UserError
from r2ec.llm.backbone import ANSWER, answer_token_id
from r2ec.llm.prompts import fold_system, render_item, render_prompt, render_text, user_messages
from r2ec.llm.tiny import tiny_gemma2_and_tokenizer, tiny_model_and_tokenizer, tiny_qwen2_and_tokenizer, tiny_tokenizer

MSGS = [{"role": "user", "content": "hi"}]


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
