"""Pooling under both paddings, hidden_at_answer, encode_items, cosine scores, item table IO."""

from __future__ import annotations

import polars as pl
import pytest
import torch

from r2ec.config import LlmCfg
from r2ec.llm.backbone import answer_token_id
from r2ec.llm.encoder import (cosine_scores, decoder_of, encode_items, hidden_at_answer, hidden_at_answer_shared,
                              load_item_table, save_item_table, shared_prefix_len)
from r2ec.llm.pooling import last_positions, pool_at_last
from r2ec.llm.tiny import tiny_model_and_tokenizer


def _seqs(tok):
    a = answer_token_id(tok)
    s1 = tok.encode("a short one", add_special_tokens=False) + [a]
    s2 = tok.encode("a <answer> much longer sequence here", add_special_tokens=False) + [a]
    s3 = tok.encode("mid <answer> tail", add_special_tokens=False)  # last <answer> not at the end
    return [s1, s2, s3]


def _single(model, s, aid):
    ids = torch.tensor([s])
    with torch.no_grad():
        h = decoder_of(model)(input_ids=ids).last_hidden_state[0]
    return h[max(i for i, t in enumerate(s) if t == aid)]


@pytest.mark.parametrize("side", ["left", "right"])
def test_pool_matches_unpadded_single_sequence(side):
    model, tok = tiny_model_and_tokenizer()
    aid, pad = answer_token_id(tok), tok.pad_token_id
    seqs = _seqs(tok)
    T = max(map(len, seqs))
    ids = torch.full((len(seqs), T), pad)
    mask = torch.zeros_like(ids)
    for i, s in enumerate(seqs):
        sl = slice(T - len(s), T) if side == "left" else slice(0, len(s))
        ids[i, sl] = torch.tensor(s)
        mask[i, sl] = 1
    pos = (mask.cumsum(1) - 1).clamp(min=0)
    with torch.no_grad():
        h = decoder_of(model)(input_ids=ids, attention_mask=mask, position_ids=pos).last_hidden_state
    pooled = pool_at_last(h, ids, aid)
    for i, s in enumerate(seqs):
        assert torch.allclose(pooled[i], _single(model, s, aid), atol=1e-5), (side, i)


def test_last_positions_and_missing_token():
    ids = torch.tensor([[0, 5, 1, 5, 0], [5, 2, 2, 2, 2]])
    assert last_positions(ids, 5).tolist() == [3, 0]
    with pytest.raises(ValueError, match="absent"):
        pool_at_last(torch.zeros(1, 3, 2), torch.tensor([[1, 2, 3]]), 9)


def test_hidden_at_answer_batching_invariant():
    model, tok = tiny_model_and_tokenizer()
    aid = answer_token_id(tok)
    seqs = _seqs(tok)
    with torch.no_grad():
        v_all = hidden_at_answer(model, seqs, aid, tok.pad_token_id, batch_size=8)
        v_one = hidden_at_answer(model, seqs, aid, tok.pad_token_id, batch_size=1)
    assert v_all.shape == (3, model.config.hidden_size)
    assert torch.allclose(v_all, v_one, atol=1e-5)
    # gradients flow when enabled
    v = hidden_at_answer(model, seqs[:1], aid, tok.pad_token_id)
    v.sum().backward()
    assert model.get_input_embeddings().weight.grad is not None


def test_shared_prefix_len():
    assert shared_prefix_len([[1, 2, 3, 4], [1, 2, 3, 5, 6], [1, 2, 9]]) == 2
    assert shared_prefix_len([[1, 2, 3], [1, 2, 3, 4]]) == 2  # capped: the shortest keeps one id
    assert shared_prefix_len([[1, 2], [3, 4]]) == 0
    assert shared_prefix_len([]) == 0


@pytest.mark.parametrize("batch_size", [1, 2, 8])
def test_hidden_at_answer_shared_equals_full_forward(batch_size):
    model, tok = tiny_model_and_tokenizer()
    aid = answer_token_id(tok)
    head = tok.encode("a shared chat template and instruction:", add_special_tokens=False)
    tails = ["one", "a much longer history of several items", "mid <answer> tail", "x"]
    seqs = [head + tok.encode(t, add_special_tokens=False) + [aid] for t in tails]
    assert shared_prefix_len(seqs) >= len(head)
    with torch.no_grad():
        full = hidden_at_answer(model, seqs, aid, tok.pad_token_id, batch_size=8)
        shared = hidden_at_answer_shared(model, seqs, aid, tok.pad_token_id, batch_size=batch_size)
        # no shared prefix at all: the plain path
        fallback = hidden_at_answer_shared(model, _seqs(tok), aid, tok.pad_token_id)
        plain = hidden_at_answer(model, _seqs(tok), aid, tok.pad_token_id)
    torch.testing.assert_close(shared, full, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(fallback, plain)


def test_encode_items_shape_row0_and_order(tmp_path):
    model, tok = tiny_model_and_tokenizer()
    items = pl.DataFrame({"item_id": [1, 2, 3], "source_id": ["a", "b", "c"],
                          "title": ["A much longer title for item one", "B", "C c"],
                          "average_rating": [4.0, None, 3.5], "rating_number": [10, 20, None]})
    model.train()
    table = encode_items(model, tok, items, "product", LlmCfg(backbone="tiny-random"), batch_size=2,
                         progress=False)
    assert model.training  # mode restored
    assert table.shape == (4, model.config.hidden_size) and table.dtype == torch.float32
    assert torch.all(table[0] == 0)
    # row j is item j regardless of the length sorting
    from r2ec.llm.encoder import item_prompt_ids
    ids = item_prompt_ids(tok, items, "product")
    model.eval()
    with torch.no_grad():
        v2 = hidden_at_answer(model, [ids[1]], answer_token_id(tok), tok.pad_token_id)
    assert torch.allclose(table[2], v2[0], atol=1e-5)
    save_item_table(tmp_path / "t.pt", table, {"step": 3})
    t2, meta = load_item_table(tmp_path / "t.pt")
    assert torch.equal(t2, table) and meta == {"step": 3}
    with pytest.raises(ValueError, match="dense"):
        encode_items(model, tok, items.with_columns(pl.col("item_id") + 1), "product", LlmCfg(), progress=False)


def test_cosine_scores():
    user = torch.tensor([[1.0, 0.0], [0.0, 2.0]], requires_grad=True)
    items = torch.tensor([[0.0, 0.0], [2.0, 0.0], [1.0, 1.0]])
    s = cosine_scores(user, items, tau=0.5)
    assert s.shape == (2, 3) and torch.isinf(s[:, 0]).all() and (s[:, 0] < 0).all()
    assert torch.allclose(s[0, 1:], torch.tensor([2.0, 2 ** -0.5 / 0.5]))
    assert torch.allclose(s[1, 1:], torch.tensor([0.0, 2 ** -0.5 / 0.5]))
    s[:, 1:].sum().backward()
    assert user.grad is not None and torch.isfinite(user.grad).all()
