"""BigRec and D3 on the tiny random Llama: title trie, constrained beam search, grounding, the text-free
assistant, end-to-end runs through the shared evaluator, SFT kill-and-resume."""

import dataclasses
import json
import math
from types import SimpleNamespace

import pytest
import torch

from r2ec.baselines.bigrec import (_BigRec, drop_target_duplicates, embed_ids, embed_texts, grounding_distance,
                                   popularity_weights, train_bigrec)
from r2ec.baselines.d3 import train_d3
from r2ec.baselines.title_trie import (TitleTrie, assistant_mass, beam_search, build_title_trie, response_ids,
                                       response_text)
from r2ec.config import BigrecCfg, ConfigError, D3Cfg, EvalCfg, from_dict
from r2ec.errors import UserError
from r2ec.eval.ranking import rank_targets
from r2ec.llm.rollout import completion_logprobs
from r2ec.llm.tiny import tiny_model_and_tokenizer
from r2ec.train.checkpoint import load_checkpoint
from recpo_fixtures import Killed, kill_at, tiny_dataset, tiny_params

ODD = ["", "Amélie (2001)", "Ame\u0301lie (2001)", "東京物語", "🎬 \u200b zero-width", "quote \" inside", "a",
       "Amélie (2001)"]  # empty, unicode (NFC and NFD), CJK, emoji, a quote, a one-byte title, a duplicate


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: more threads only spin on a shared machine
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def tiny():
    model, tok = tiny_model_and_tokenizer(seed=0)
    return model, tok, int(tok.eos_token_id), int(tok.pad_token_id)


def _complete_sequences(trie):
    out, stack = set(), [(0, ())]
    while stack:
        node, seq = stack.pop()
        for t, n in zip(trie.child_tok[node].tolist(), trie.child_node[node].tolist()):
            if n in trie.leaf_title:
                out.add(seq + (t,))
            stack.append((n, seq + (t,)))
    return out


def test_trie_admits_exactly_the_catalogue_titles(tiny):
    _, tok, eos, _ = tiny
    ids = list(range(1, len(ODD) + 1))
    trie = build_title_trie(tok, ODD, ids, eos)
    seqs = {tuple(response_ids(tok, t, eos)) for t in ODD}
    assert _complete_sequences(trie) == seqs and len(seqs) == len(ODD) - 1
    assert sorted(trie.items_of(response_ids(tok, "Amélie (2001)", eos))) == [2, 8]  # duplicates share a leaf
    assert trie.items_of(response_ids(tok, "Ame\u0301lie (2001)", eos)) == [3]  # NFD is another title
    assert trie.items_of(response_ids(tok, "", eos)) == [1]  # the empty title still has a response
    assert trie.items_of(response_ids(tok, "Amélie", eos)) is None
    assert trie.items_of(response_ids(tok, "a", eos)[:-1]) is None  # a prefix is no title
    for t in ODD:
        assert response_text(tok, response_ids(tok, t, eos), eos) == t
    assert embed_ids(tok, "", eos) == [eos]  # a title that tokenises to nothing is embedded as EOS
    # every leaf is reached by EOS only; excluded titles (all their items) kill their own nodes only
    dead = set(trie.dead_nodes([2, 8, 4]).tolist())
    assert trie.title_paths[trie.item_title[2]][-1] in dead and trie.title_paths[trie.item_title[4]][-1] in dead
    assert trie.title_paths[trie.item_title[3]][-1] not in dead
    assert not set(trie.dead_nodes([2]).tolist())  # item 8 still carries the title
    with pytest.raises(ValueError):
        TitleTrie([[5, 6], [5, 6, 7]], [1, 2])  # a sequence that is a prefix of another one


def _titles():
    return ["red fox", "red fig", "blue", "bl", "quiet jazz", "r", "epic retro", "blue"]


def test_constrained_beam_search_with_length_penalty_0_is_exact(tiny):
    model, tok, eos, pad = tiny
    titles = _titles()
    trie = build_title_trie(tok, titles, list(range(1, len(titles) + 1)), eos)
    prompts = [tok.encode("history: red blue\n"), tok.encode("x")]
    n = len(trie.title_paths)
    hyps = beam_search(model, prompts, num_beams=n, max_new_tokens=trie.max_len, eos_id=eos, pad_id=pad,
                       length_penalty=0.0, trie=trie)
    for p, hs in zip(prompts, hyps):
        seqs = [list(s) for s in sorted({tuple(response_ids(tok, t, eos)) for t in titles})]
        with torch.no_grad():
            brute = [float(lp.sum()) for lp in completion_logprobs(model, [(p, s) for s in seqs], pad_id=pad)]
        want = sorted(zip(brute, map(tuple, seqs)), reverse=True)
        assert len(hs) == n and all(h.finished for h in hs)
        assert [tuple(h.tokens) for h in hs] == [s for _, s in want]
        assert [h.score for h in hs] == pytest.approx([b for b, _ in want], abs=1e-4)
    # fewer beams (not exact any more): best first, each hypothesis a real title
    top3 = beam_search(model, prompts[:1], num_beams=3, max_new_tokens=trie.max_len, eos_id=eos, pad_id=pad,
                       length_penalty=0.0, trie=trie)[0]
    assert 0 < len(top3) <= 3 and all(trie.items_of(h.tokens) for h in top3)
    assert [h.score for h in top3] == sorted((h.score for h in top3), reverse=True)
    # excluded titles never come out
    dead = [trie.dead_nodes([1, 3, 8])]
    hs = beam_search(model, prompts[:1], num_beams=n, max_new_tokens=trie.max_len, eos_id=eos, pad_id=pad,
                     length_penalty=0.0, trie=trie, dead=dead)[0]
    names = {response_text(tok, h.tokens, eos) for h in hs}
    assert names == set(titles) - {"red fox", "blue"}


class _UniformLM(torch.nn.Module):
    """A causal-LM stand-in whose next-token distribution is uniform over ``vocab`` tokens."""

    def __init__(self, vocab):
        super().__init__()
        self.vocab = vocab
        self.w = torch.nn.Parameter(torch.zeros(1))

    def forward(self, input_ids, past_key_values=None, **kw):
        return SimpleNamespace(logits=torch.zeros(input_ids.shape[0], 1, self.vocab), past_key_values=past_key_values)


@pytest.mark.parametrize("aggregate", ["sum", "max"])
def test_assistant_mixing_matches_a_hand_computed_example(aggregate):
    E = 9  # EOS; items 1: [5 6], 2: [5 7], 3: [8]
    trie = TitleTrie([[5, 6, E], [5, 7, E], [8, E]], [1, 2, 3])
    probs = torch.tensor([[0.0, 0.5, 0.2, 0.3]])
    mass = assistant_mass(trie, probs, aggregate)
    n5 = trie.title_paths[0][0]
    assert float(mass[0, n5]) == pytest.approx(0.7 if aggregate == "sum" else 0.5)
    g, lv = 0.4, -math.log(10)  # uniform LM over 10 tokens
    hs = beam_search(_UniformLM(10), [[1, 2]], num_beams=3, max_new_tokens=3, eos_id=E, pad_id=0,
                     length_penalty=0.0, trie=trie, mass=mass, gamma=g)[0]
    got = {tuple(h.tokens): h.score for h in hs}
    m5 = 0.7 if aggregate == "sum" else 0.5
    want = {  # per token: (1 - g) * log p_LLM + g * log(mass(child) / sum of the allowed children's mass)
        (5, 6, E): 3 * (1 - g) * lv + g * (math.log(m5 / (m5 + 0.3)) + math.log(0.5 / 0.7)),
        (5, 7, E): 3 * (1 - g) * lv + g * (math.log(m5 / (m5 + 0.3)) + math.log(0.2 / 0.7)),
        (8, E): 2 * (1 - g) * lv + g * math.log(0.3 / (m5 + 0.3)),
    }
    assert got == pytest.approx(want, abs=1e-5)
    assert [tuple(h.tokens) for h in hs] == sorted(want, key=lambda k: -want[k])


def test_grounding_picks_the_nearest_item_and_the_best_rank_over_duplicate_titles(tiny):
    model, tok, eos, pad = tiny
    titles = _titles()  # items 3 and 8 share "blue"
    trie = build_title_trie(tok, titles, list(range(1, 9)), eos)
    table = embed_texts(model, tok, titles, eos, pad, batch_size=3)
    gen = embed_texts(model, tok, ["red fig", "blue"], eos, pad, batch_size=4)
    scores = torch.cat([torch.full((2, 1), float("-inf")), -torch.cdist(gen, table)], 1)
    assert scores[0].argmax().item() == 2  # the generated title's own item is the nearest
    assert rank_targets(scores.clone(), torch.tensor([2, 8]), None).tolist() == [1, 2]  # tie: against the target
    fixed = drop_target_duplicates(scores.clone(), [2, 8], trie)
    assert rank_targets(fixed, torch.tensor([2, 8]), None).tolist() == [1, 1]  # best rank over the duplicates
    assert rank_targets(drop_target_duplicates(scores.clone(), [3, 3], trie), torch.tensor([3, 3]),
                        None).tolist()[1] == 1


def test_popularity_grounding_matches_a_hand_computed_example():
    # counts of items 1..3 = 1, 3, 5 -> p = (0, .5, 1); distances of one generation: 2, 4, 6 -> (0, .5, 1)
    p = popularity_weights([0, 1, 3, 5], 3)
    assert p.tolist() == [0.0, 0.5, 1.0]
    d = torch.tensor([[2.0, 4.0, 6.0]])
    assert torch.equal(grounding_distance(d, p, 0.0), d)  # gamma 0: the plain L2 grounding
    # gamma 2: (0, .5 / 1.5^2, 1 / 2^2) = (0, .2222, .25): the exact match stays first
    assert torch.allclose(grounding_distance(d, p, 2.0), torch.tensor([[0.0, 0.5 / 2.25, 0.25]]))
    # gamma 4: the popular item 3 (1/16) overtakes item 2 (.5/5.0625 = .0988)
    assert grounding_distance(d, p, 4.0)[0].argsort().tolist() == [0, 2, 1]
    assert popularity_weights([0, 2, 2], 2).tolist() == [0.0, 0.0]  # equal counts: no popularity signal


def _params(bigrec=None, **d3):
    p = tiny_params()
    return dataclasses.replace(
        p, eval=EvalCfg(ks=(5, 10), max_samples=0, valid_max_samples=0, batch_size=8),
        bigrec=BigrecCfg(train_samples=0, epochs=1, batch_size=4, eval_every=2, lr=1e-2, warmup_steps=0,
                         checkpoint_every=1, decode_batch_size=4, history_items=2, **(bigrec or {})),
        d3=D3Cfg(num_beams=10, decode_batch_size=4, **d3))


def test_bigrec_and_d3_end_to_end_through_the_evaluator(tmp_path, monkeypatch):
    from r2ec.baselines.seqtrain import train_classic
    from r2ec.config import SeqModelCfg
    ds = tiny_dataset()
    p = _params(bigrec={"popularity_gamma": (0.0, 3.0)}, gamma=(0.0, 0.5))
    with pytest.raises(UserError, match="bigrec"):
        train_d3(ds, p, tmp_path / "d3", None, progress=False, dvclive=False)
    decoded = []
    decode = _BigRec.decode
    monkeypatch.setattr(_BigRec, "decode",
                        lambda self, rows, *a, **k: decoded.extend(rows) or decode(self, rows, *a, **k))
    m = train_bigrec(ds, p, tmp_path / "bigrec", None, progress=False, dvclive=False)
    n_valid = len(open(tmp_path / "bigrec" / "valid_log.jsonl").readlines())
    assert len(decoded) == n_valid * ds.split("valid").height + ds.split("test").height  # once per sample
    # popularity_gamma candidates are scored from one decode per validation
    assert set(m["valid"]["valid_N@10_by_popularity_gamma"]) == {"0.0", "3.0"}
    assert m["test"]["popularity_gamma"] == m["valid"]["popularity_gamma"] in (0.0, 3.0)
    best = json.loads((tmp_path / "bigrec" / "best" / "valid.json").read_text())
    assert best["popularity_gamma"] == m["test"]["popularity_gamma"]
    for split in ("valid", "test"):
        assert m[split]["n_samples"] == ds.split(split).height and 0 <= m[split]["N@10"] <= 1
        assert 0 <= m[split]["invalid_rate"] <= 1 and m[split]["decode_samples_per_s"] > 0
    assert json.loads((tmp_path / "bigrec" / "metrics.json").read_text()) == m
    gens = [json.loads(x) for x in open(tmp_path / "bigrec" / "test_generations.jsonl")]
    assert len(gens) == ds.split("test").height and {"generated", "target", "valid"} <= set(gens[0])
    with pytest.raises(UserError, match="sasrec"):
        train_d3(ds, p, tmp_path / "d3", None, progress=False, dvclive=False)
    train_classic("sasrec", ds, SeqModelCfg(epochs=1, hidden=16, heads=1), p.eval, tmp_path / "sasrec",
                  progress=False, config={})
    m3 = train_d3(ds, p, tmp_path / "d3", None, progress=False, dvclive=False)
    assert m3["test"]["invalid_rate"] == 0.0 and m3["test"]["gamma"] in (0.0, 0.5)
    assert set(m3["valid"]["valid_N@10_by_gamma"]) == {"0.0", "0.5"}
    # Table 4 times both trained runs through their evaluation scorers
    from r2ec.report.latency import registered_timers, time_scorer
    test = ds.split("test").head(3)
    for m in ("bigrec", "d3"):
        scorer = registered_timers()[m](m, tmp_path / m, ds, p, tmp_path / "cache")
        assert scorer(test).shape == (3, ds.n_items + 1)
        assert len(time_scorer(scorer, test, 2, 5, warmup=0)) == 2
    other = dataclasses.replace(p, lora=dataclasses.replace(p.lora, r=2))
    with pytest.raises(UserError, match="lora"):
        train_d3(ds, other, tmp_path / "d3b", None, progress=False, dvclive=False)


def test_sft_learns_the_target_titles(tmp_path):
    ds = tiny_dataset()
    p = _params()
    p = dataclasses.replace(p, lora=dataclasses.replace(p.lora, alpha=64),
                            bigrec=dataclasses.replace(p.bigrec, epochs=20, schedule="constant", lr=3e-3))
    tr = _BigRec(ds, p, tmp_path, None, False, False, None)
    rows = tr.ds.split("train")[:4]
    losses = [tr.train_step(rows)["loss"] for _ in range(20)]
    assert losses[-1] < losses[0] - 0.5 and losses[-1] < min(losses[:10])


def test_sft_kill_and_resume_equals_straight_run(tmp_path):
    ds = tiny_dataset()
    p = _params()
    p = dataclasses.replace(p, bigrec=dataclasses.replace(p.bigrec, epochs=3))  # 3 x 18 / 4 -> 14 steps
    m_straight = train_bigrec(ds, p, tmp_path / "straight", None, progress=False, dvclive=False)

    with pytest.raises(Killed):
        train_bigrec(ds, p, tmp_path / "resumed", None, progress=False, dvclive=False, hook=kill_at(3))
    m_resumed = train_bigrec(ds, p, tmp_path / "resumed", None, progress=False, dvclive=False)
    a, b = load_checkpoint(tmp_path / "straight" / "last"), load_checkpoint(tmp_path / "resumed" / "last")
    assert a["step"] == b["step"] > 3
    for k in a["trainable"]:
        assert torch.equal(a["trainable"][k], b["trainable"][k]), k
    strip = {"decode_s", "decode_samples_per_s"}  # wall-clock
    for split in ("valid", "test"):
        assert {k: v for k, v in m_straight[split].items() if k not in strip} == \
               {k: v for k, v in m_resumed[split].items() if k not in strip}
    logs = [[json.loads(x)["step"] for x in open(tmp_path / d / "train_log.jsonl")] for d in ("straight", "resumed")]
    assert logs[0] == logs[1] == list(range(a["step"]))


def test_params_validation():
    with pytest.raises(ConfigError, match="d3.num_beams"):
        from_dict({"d3": {"num_beams": 10}})
    with pytest.raises(ConfigError, match="d3.gamma"):
        from_dict({"d3": {"gamma": [0.5], "assistant": ""}})
    with pytest.raises(ConfigError, match="bigrec.batch_size"):
        from_dict({"bigrec": {"batch_size": 0}})
    with pytest.raises(ConfigError, match="bigrec.popularity_gamma"):
        from_dict({"bigrec": {"popularity_gamma": [0.0, -1.0]}})
    with pytest.raises(ConfigError, match="bigrec.popularity_gamma"):
        from_dict({"bigrec": {"popularity_gamma": []}})
    assert from_dict({"llm_baselines": ["bigrec", "d3"]}).bigrec.train_max_samples == 1024
    with pytest.raises(ConfigError, match="list it in llm_baselines"):
        from_dict({"baselines": ["sasrec", "bigrec"]})
