"""LangPTune on the tiny random Llama, a tiny random BERT retriever built here and the tiny synthetic dataset."""

from __future__ import annotations

import dataclasses
import json
import math

import polars as pl
import pytest
import torch

from r2ec.baselines.langptune import _LangPTune, train_langptune
from r2ec.baselines.rebel import info_nce, rank_reward, rebel_loss, whiten
from r2ec.config import LangptuneCfg, Params
from r2ec.train.checkpoint import load_checkpoint
from recpo_fixtures import Killed, kill_at, tiny_dataset, tiny_params


@pytest.fixture(scope="module")
def ds():
    return tiny_dataset()


@pytest.fixture(scope="module")
def retriever_dir(tmp_path_factory):
    """A random 1-layer BERT over the tiny byte-level tokenizer, saved as a local model directory."""
    from transformers import BertConfig, BertModel

    from r2ec.llm.tiny import tiny_tokenizer
    path = tmp_path_factory.mktemp("tiny_retriever")
    tok = tiny_tokenizer()
    tok.save_pretrained(path)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        BertModel(BertConfig(vocab_size=len(tok), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                             intermediate_size=32, max_position_embeddings=128, pad_token_id=tok.pad_token_id)
                  ).save_pretrained(path)
    return str(path)


def _params(retriever: str, **kw) -> Params:
    base = dict(profile_tokens=4, retriever=retriever, retriever_max_tokens=64, batch_size=2, steps=2, eval_every=2,
                checkpoint_every=1, num_lm_updates=1, rebel_epochs=1, num_emb_updates=1, retriever_batch_size=4,
                profile_pool=16, eval_batch_size=8, lr=1e-2, retriever_lr=1e-2, kl_coef=0.1, patience=3)
    base.update(kw)
    return dataclasses.replace(tiny_params(), langptune=LangptuneCfg(**base))


# ---------------------------------------------------------------------------------------------- losses on literals

def test_rebel_loss_on_literal_numbers():
    new = torch.tensor([[1.0, 0.5], [0.0, 0.2]])
    old = torch.tensor([[0.5, 0.5], [0.1, 0.0]])
    r = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    # log-ratio differences 0.5 and -0.3; eta x reward differences 0.5 and -1.0 -> residuals 0 and 0.7
    assert rebel_loss(new, old, r, eta=0.5).item() == pytest.approx((0.0 + 0.49) / 2)
    # eta = 1: residuals -0.5 and 1.7
    assert rebel_loss(new, old, r, eta=1.0).item() == pytest.approx((0.25 + 2.89) / 2)
    # gradient: d/d new[0,0] of (new00 - new01 - ... )^2 / 2 = residual_0 = -0.5 at eta 1
    x = new.clone().requires_grad_(True)
    rebel_loss(x, old, r, eta=1.0).backward()
    assert x.grad[0].tolist() == pytest.approx([-0.5, 0.5])
    assert x.grad[1].tolist() == pytest.approx([1.7, -1.7])


def test_whiten_and_rank_rewards_on_literals():
    w = whiten(torch.tensor([1.0, 2.0, 3.0, 4.0]))  # mean 2.5, biased variance 1.25
    assert w.tolist() == pytest.approx([-1.5 / math.sqrt(1.25), -0.5 / math.sqrt(1.25), 0.5 / math.sqrt(1.25),
                                        1.5 / math.sqrt(1.25)], rel=1e-6)
    ranks = torch.tensor([1, 3, 7])
    assert rank_reward(ranks, "ndcg").tolist() == pytest.approx([1.0, 0.5, 1 / 3])
    assert rank_reward(ranks, "mrr").tolist() == pytest.approx([1.0, 1 / 3, 1 / 7])
    with pytest.raises(ValueError, match="langptune.reward"):
        rank_reward(ranks, "hit")


def test_info_nce_on_literal_numbers():
    q = torch.tensor([[2.0, 0.0], [0.0, 1.0]])  # normalised inside: cosines
    k = torch.tensor([[1.0, 0.0], [0.0, 3.0]])
    # logits [[2, 0], [0, 2]] at tau 0.5: -log(e^2 / (e^2 + 1)) = log(1 + e^-2) for both rows
    assert info_nce(q, k, torch.tensor([0, 1]), tau=0.5).item() == pytest.approx(math.log1p(math.exp(-2.0)))
    # the wrong labels: -log(1 / (e^2 + 1))
    assert info_nce(q, k, torch.tensor([1, 0]), tau=0.5).item() == pytest.approx(math.log(math.exp(2.0) + 1))
    # two queries sharing one key (duplicate targets are one in-batch candidate)
    one = info_nce(q, torch.tensor([[1.0, 1.0]]), torch.tensor([0, 0]), tau=0.1)
    assert one.item() == pytest.approx(0.0, abs=1e-6)
    # logQ correction: q = (e^-1, e^-3) -> logits [[2 + 1, 0 + 3], [0 + 1, 2 + 3]]:
    # row 0: -log(e^3 / (e^3 + e^3)) = log 2; row 1: -log(e^5 / (e^1 + e^5)) = log(1 + e^-4)
    lq = torch.tensor([-1.0, -3.0])
    want = (math.log(2.0) + math.log1p(math.exp(-4.0))) / 2
    assert info_nce(q, k, torch.tensor([0, 1]), tau=0.5, log_q=lq).item() == pytest.approx(want)
    # a popularity prior (logit adjustment) adds to the logits; with log_q equal to it the two cancel
    lp = torch.tensor([math.log(0.5), 0.0])  # logits [[2 - log 2, 0], [-log 2, 2]]
    want = (math.log1p(2 * math.exp(-2.0)) + math.log1p(math.exp(-2.0) / 2)) / 2
    assert info_nce(q, k, torch.tensor([0, 1]), tau=0.5, log_prior=lp).item() == pytest.approx(want)
    assert info_nce(q, k, torch.tensor([0, 1]), tau=0.5, log_q=lp, log_prior=lp).item() == pytest.approx(
        math.log1p(math.exp(-2.0)))


# ---------------------------------------------------------------------------------------------- the round

def _snapshot(module: torch.nn.Module, only_lora: bool = False) -> dict[str, torch.Tensor]:
    return {n: q.detach().clone() for n, q in module.named_parameters()
            if q.requires_grad and (not only_lora or "lora_" in n)}


def test_one_round_changes_the_adapter_and_the_retriever(ds, tmp_path, retriever_dir):
    tr = _LangPTune(ds, _params(retriever_dir, rebel_epochs=2, num_emb_updates=2), tmp_path, None, False, False,
                    None)
    lora, retr = _snapshot(tr.policy, only_lora=True), _snapshot(tr.retriever)
    assert lora and retr
    rec = tr.train_step(tr.batch_rows(tr.train_pool()))
    moved = _snapshot(tr.policy, only_lora=True)
    assert not [n for n in lora if torch.equal(lora[n], moved[n])]  # pass 1 moves every B, pass 2 every A
    after = _snapshot(tr.retriever)
    unchanged = [n for n in retr if torch.equal(retr[n], after[n])]
    assert all(n.startswith("pooler.") for n in unchanged), unchanged  # the pooler is not used by the pooling
    assert len(tr.pool) == 4 and rec["pool"] == 4  # 2 users x 2 profiles
    assert rec["profile_len"] == 4.0  # fixed length
    for k in ("reward", "mean_rank", "rebel_loss", "kl", "grad_norm", "retriever_loss", "rollout_s", "update_s"):
        assert math.isfinite(rec[k]), k
    assert tr.table_version != tr.rversion  # the retriever moved: the item table is stale


def test_retriever_only_round_leaves_the_adapter(ds, tmp_path, retriever_dir):
    tr = _LangPTune(ds, _params(retriever_dir, num_lm_updates=0), tmp_path, None, False, False, None)
    lora = _snapshot(tr.policy, only_lora=True)
    rec = tr.train_step(tr.batch_rows(tr.train_pool()))
    assert all(torch.equal(v, _snapshot(tr.policy, only_lora=True)[n]) for n, v in lora.items())
    assert "rebel_loss" not in rec and math.isfinite(rec["retriever_loss"])


def test_logq_correction_shifts_the_retriever_loss_by_train_popularity(ds, tmp_path, retriever_dir):
    import numpy as np
    recs, trs = [], []
    for on in (False, True):
        tr = _LangPTune(ds, _params(retriever_dir, num_lm_updates=0, logq_correction=on), tmp_path / str(on), None,
                        False, False, None)
        recs.append(tr.train_step(tr.batch_rows(tr.train_pool())))
        trs.append(tr)
    # log q = the add-one smoothed train-target share over the N items (column 0, no item, never a key)
    counts = np.bincount(ds.split("train")["target_item_id"].to_numpy(), minlength=ds.n_items + 1)[1:] + 1.0
    assert trs[0].log_q is None
    assert trs[1].log_q[1:].tolist() == pytest.approx(np.log(counts / counts.sum()).tolist(), rel=1e-5)
    assert trs[0].pool == trs[1].pool  # the same profiles and batches: only the loss differs
    assert recs[0]["retriever_loss"] != pytest.approx(recs[1]["retriever_loss"])


# ---------------------------------------------------------------------------------------------- runs

def test_kill_and_resume_equals_straight_run(ds, tmp_path, retriever_dir):
    p = _params(retriever_dir, steps=3, eval_every=2, num_lm_updates=2)
    m_straight = train_langptune(ds, p, tmp_path / "straight", None, progress=False, dvclive=False)
    with pytest.raises(Killed):
        train_langptune(ds, p, tmp_path / "resumed", None, progress=False, dvclive=False, hook=kill_at(2))
    assert load_checkpoint(tmp_path / "resumed" / "last")["step"] == 2
    m_resumed = train_langptune(ds, p, tmp_path / "resumed", None, progress=False, dvclive=False)
    a, b = load_checkpoint(tmp_path / "straight" / "last"), load_checkpoint(tmp_path / "resumed" / "last")
    assert a["step"] == b["step"] == 3
    assert any(k.startswith("retriever/") for k in a["trainable"])
    assert a["trainable"].keys() == b["trainable"].keys()
    for k in a["trainable"]:
        assert torch.equal(a["trainable"][k], b["trainable"][k]), k
    assert a["pool"] == b["pool"]
    assert m_straight == m_resumed
    logs = [[json.loads(line) for line in open(tmp_path / d / "train_log.jsonl")] for d in ("straight", "resumed")]
    assert [r["step"] for r in logs[0]] == [r["step"] for r in logs[1]] == [0, 1, 2]
    assert [r["rebel_loss"] for r in logs[0]] == [r["rebel_loss"] for r in logs[1]]


def test_end_to_end_run_through_the_evaluator_and_recommend(ds, tmp_path, retriever_dir):
    from r2ec.serve.recommend import recommend

    run = tmp_path / "runs" / "tiny" / "langptune"
    m = train_langptune(ds, _params(retriever_dir, steps=2, eval_every=1), run, None, progress=False, dvclive=False)
    on_disk = json.loads((run / "metrics.json").read_text())
    assert on_disk == json.loads(json.dumps(m)) and "N@10" in on_disk["test"] and "N@10" in on_disk["valid"]
    ranks = pl.read_parquet(run / "ranks.parquet")
    n_test = ds.split("test").height
    assert ranks.filter(pl.col("split") == "test").height == n_test
    assert ranks["rank"].min() >= 1 and ranks["rank"].max() <= ds.n_items
    profiles = [json.loads(line) for line in open(run / "test_profiles.jsonl")]
    assert [r["sample_id"] for r in profiles] == sorted(ds.split("test")["sample_id"].to_list())
    # step 0 (the untrained pipeline) is validated too, so model selection can keep it
    assert [json.loads(line)["step"] for line in open(run / "valid_log.jsonl")] == [0, 1, 2]
    for f in ("trainable.pt", "item_table.pt", "adapter/adapter_config.json"):
        assert (run / "best" / f).exists(), f
    assert json.loads((run / "config.json").read_text())["run"]["method"] == "langptune"

    data = tmp_path / "data" / "tiny"
    data.mkdir(parents=True)
    ds.items.write_parquet(data / "items.parquet")
    titles = ds.items["title"].to_list()
    out = recommend(run, [titles[1], titles[2]], k=3, data_dir=data)
    assert out["profile"] == out["reasoning"] and isinstance(out["profile"], str)
    ids = [i for i, _, _ in out["items"]]
    assert len(ids) == 3 and not {2, 3} & set(ids)
    assert [s for _, _, s in out["items"]] == sorted((s for _, _, s in out["items"]), reverse=True)
    # a run trained with the popularity prior is served with it: every score moves by w log p_hat(item)
    from r2ec.data.popularity import log_popularity_prior
    cfg = json.loads((run / "config.json").read_text())
    ds.split("train").write_parquet(data / "train.parquet")
    lp = log_popularity_prior(ds.split("train"), ds.n_items, 2.0)
    k = ds.n_items - 2
    plain = {i: s for i, _, s in recommend(run, [titles[1], titles[2]], k=k, data_dir=data)["items"]}
    cfg["langptune"]["popularity_prior"] = 2.0
    (run / "config.json").write_text(json.dumps(cfg))
    prior = {i: s for i, _, s in recommend(run, [titles[1], titles[2]], k=k, data_dir=data)["items"]}
    assert set(prior) == set(plain)
    assert [prior[i] - plain[i] for i in sorted(plain)] == pytest.approx([lp[i].item() for i in sorted(plain)],
                                                                         abs=1e-4)

    # Table 4 times the trained run through its evaluation scorer (best LoRA + retriever + item table)
    from r2ec.report.latency import registered_timers
    scorer = registered_timers()["langptune"]("langptune", run, ds, _params(retriever_dir, steps=2, eval_every=1), tmp_path)
    assert scorer(ds.split("test").head(2)).shape == (2, ds.n_items + 1)


def test_zero_shot_run_evaluates_without_training(ds, tmp_path, retriever_dir):
    m = train_langptune(ds, _params(retriever_dir, steps=0), tmp_path, None, progress=False, dvclive=False)
    assert "N@10" in m["test"] and not (tmp_path / "train_log.jsonl").exists()
    assert not (tmp_path / "best").exists()


def test_config_rejects_bad_values(retriever_dir):
    from r2ec.config import ConfigError
    with pytest.raises(ConfigError, match="langptune.profile_tokens"):
        LangptuneCfg(profile_tokens=0)
    with pytest.raises(ConfigError, match="langptune.tau"):
        LangptuneCfg(tau=0.0)
    with pytest.raises(ConfigError, match="langptune.num_emb_updates"):
        LangptuneCfg(num_emb_updates=-1)


def test_popularity_prior_adds_to_scores_rewards_and_the_retriever_loss(ds, tmp_path, retriever_dir):
    """With ``langptune.popularity_prior`` w the scores are cosine / tau + w log p_hat(i) (the train-target share,
    add-one smoothed), the reward ranks under the same scores, and the InfoNCE logits carry the prior too."""
    import numpy as np

    from r2ec.llm.encoder import cosine_scores
    trs, recs = [], []
    for w in (0.0, 0.5):
        tr = _LangPTune(ds, _params(retriever_dir, num_lm_updates=0, popularity_prior=w), tmp_path / str(w), None,
                        False, False, None)
        recs.append(tr.train_step(tr.batch_rows(tr.train_pool())))
        trs.append(tr)
    off, on = trs
    assert off.log_prior() is None
    counts = np.bincount(ds.split("train")["target_item_id"].to_numpy(), minlength=ds.n_items + 1)[1:]
    want = 0.5 * np.log((counts + 1.0) / (counts.sum() + ds.n_items))
    assert on.log_prior()[1:].tolist() == pytest.approx(want.tolist(), rel=1e-5)
    assert off.pool == on.pool  # the same profiles: only the losses differ
    assert recs[0]["retriever_loss"] != pytest.approx(recs[1]["retriever_loss"])
    rows = ds.split("test")[:3]
    on.refresh_table()
    got = on.scorer(rows)
    texts = [on.profiles[int(s)] for s in rows["sample_id"].to_list()]
    base = cosine_scores(on.embed(texts), on.table, on.lc.tau)
    torch.testing.assert_close(got[:, 1:], base[:, 1:] + torch.as_tensor(want).float().view(1, -1))
    # the reward's ranks are the evaluator's ranks under the same (prior-adjusted) scores
    from r2ec.eval.ranking import rank_targets
    hist = rows["history_item_ids"].to_list()
    want_ranks = rank_targets(got, torch.as_tensor(rows["target_item_id"].to_list()), hist)
    assert on.ranks_of(texts, rows, 1).tolist() == want_ranks.tolist()
