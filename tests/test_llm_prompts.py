"""Prompts: DESIGN.md §4 wording, Δt, chat rendering, system-prompt handling."""

from __future__ import annotations

from r2ec.llm.backbone import ANSWER, answer_token_id
from r2ec.llm.prompts import (category_nouns, display_title, domain_noun, humanize_delta, item_messages, render_item,
                              render_prompt, render_text, sample_prompt_ids, user_messages)
from r2ec.llm.tiny import tiny_model_and_tokenizer

DAY = 86400


def test_user_prompt_wording_and_delta_t():
    hist = [{"title": "Heat", "rating": 4.0, "timestamp": 1_000_000},
            {"title": "Toy Story", "rating": 5, "timestamp": 1_000_000 + 7 * DAY}]
    msgs = user_messages(hist, 1_000_000 + 10 * DAY, "movie")
    assert len(msgs) == 1 and msgs[0]["role"] == "user"
    text = msgs[0]["content"]
    assert text.startswith("Analyze in depth and finally recommend next movie I might purchase inside "
                           "<answer> and </answer>.\nFor example, <answer>a product</answer>.\n\n"
                           "Below is my historical movies purchases and ratings (out of 5):\n")
    lines = text.splitlines()
    assert lines[-2] == "1 week ago: [Heat] (4.0)"
    assert lines[-1] == "3 days ago: [Toy Story] (5.0)"


def test_delta_t_milliseconds_auto():
    ms = 1_700_000_000_000
    msgs = user_messages([{"title": "A", "rating": 3.0, "timestamp": ms - 2 * 3600 * 1000}], ms, "product")
    assert "2 hours ago: [A] (3.0)" in msgs[0]["content"]
    assert humanize_delta(400 * DAY) == "1 year" and humanize_delta(65 * DAY) == "2 months"
    assert humanize_delta(0) == "moments"
    assert domain_noun("movielens-100k") == "movie" and domain_noun("Video_Games") == "video game"
    assert category_nouns("CDs_and_Vinyl") == ("CDs and vinyl", "CD or vinyl")
    assert category_nouns("Electronics") == ("products", "product") == category_nouns("product")
    text = user_messages([], 0, "Musical_Instruments")[0]["content"]
    assert "next musical instrument I might" in text and "historical musical instruments purchases" in text
    assert item_messages({"title": "x"}, "video game")[0]["content"].startswith(
        "Summarize key attributes of the following video game inside")


def test_item_prompt_wording():
    item = {"item_id": 1, "title": "Widget", "average_rating": 4.25, "rating_number": 120,
            "description": " ".join(["w"] * 150), "genres": None}
    text = item_messages(item, "product")[0]["content"]
    lines = text.splitlines()
    assert lines[0] == "Summarize key attributes of the following product inside <answer> and </answer>."
    assert "Title: Widget" in lines and f"User Rating: {4.25:.1f}" in lines
    assert "Number of Buyers: 120" in lines
    desc = [ln for ln in lines if ln.startswith("Description: ")][0]
    assert len(desc[len("Description: "):].split()) == 101  # 100 words + "..."
    movie = item_messages({"title": "Heat", "genres": ["Action", "Crime"], "year": 1995}, "movie")[0]["content"]
    assert "Genres: Action, Crime" in movie and "Year: 1995" in movie and "Description" not in movie


def test_chat_rendering_and_system_prompt():
    _, tok = tiny_model_and_tokenizer()
    msgs = [{"role": "user", "content": "hi"}]
    plain = render_text(tok, msgs, "")
    assert plain == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"  # default system dropped
    with_sys = render_text(tok, msgs, "Be brief.")
    assert with_sys.startswith("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nhi")
    ids = render_prompt(tok, msgs, "")
    assert tok.decode(ids) == plain
    item_ids = render_item(tok, msgs, "")
    assert item_ids[-1] == answer_token_id(tok) and tok.decode(item_ids) == plain + ANSWER
    assert len(render_prompt(tok, msgs, "", max_tokens=5)) == 5


def test_sample_prompt_drops_oldest_history_first():
    _, tok = tiny_model_and_tokenizer()
    items = {i: {"title": f"Item number {i}"} for i in range(1, 21)}
    sample = {"history_item_ids": list(range(1, 21)), "history_ratings": [4.0] * 20,
              "history_timestamps": [1000 + i for i in range(20)], "target_timestamp": 5000}
    full = sample_prompt_ids(tok, sample, items, "movie")
    short = sample_prompt_ids(tok, sample, items, "movie", max_tokens=len(full) - 10)
    text = tok.decode(short)
    assert len(short) <= len(full) - 10 and text.startswith("<|im_start|>user\nAnalyze in depth")
    assert "[Item number 1]" not in text and "[Item number 20]" in text


def test_history_year_shows_movielens_title_format():
    _, tok = tiny_model_and_tokenizer()
    items = {1: {"title": "Heat", "year": 1995}, 2: {"title": "Widget", "year": None},
             3: {"title": "Fargo", "year": float("nan")}}
    assert display_title(items[1]) == "Heat" and display_title(items[1], True) == "Heat (1995)"
    assert display_title(items[2], True) == "Widget" and display_title(items[3], True) == "Fargo"
    sample = {"history_item_ids": [1, 2], "history_ratings": [4.0, 3.0], "history_timestamps": [1000, 2000],
              "target_timestamp": 2000 + 3 * DAY}
    text = tok.decode(sample_prompt_ids(tok, sample, items, "movie", show_year=True))
    assert "[Heat (1995)] (4.0)" in text and "[Widget] (3.0)" in text
    assert "[Heat] (4.0)" in tok.decode(sample_prompt_ids(tok, sample, items, "movie"))
