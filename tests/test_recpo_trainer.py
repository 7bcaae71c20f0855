"""RecPO trainer on the tiny random Llama and a tiny synthetic dataset (TRL-style assertions)."""

import json
import math

import polars as pl
import pytest
import torch

from r2ec.train.checkpoint import load_checkpoint
from r2ec.recpo.trainer import _Trainer, train_r2ec
from recpo_fixtures import Killed, kill_at, tiny_dataset, tiny_params, with_recpo


@pytest.fixture(scope="module")
def ds():
    return tiny_dataset()


def _trainer(ds, tmp_path, **recpo):
    return _Trainer("r2ec", ds, tiny_params(**recpo), tmp_path, None, False, False, None)


def _lora(tr):
    return {n: p.detach().clone() for n, p in tr.policy.named_parameters() if p.requires_grad}


def test_recpo_step_changes_every_lora_parameter_and_ratio_moves(ds, tmp_path):
    tr = _trainer(ds, tmp_path, mu=2)  # pass 1 moves B (A has zero grad while B = 0), pass 2 moves A
    before = _lora(tr)
    assert before and all("lora_" in n for n in before)
    rec = tr.recpo_step(tr.batch_rows(tr.ds.split("train")))
    after = _lora(tr)
    unchanged = [n for n in before if torch.equal(before[n], after[n])]
    assert not unchanged, f"parameters not updated: {unchanged}"
    # the second pass sees the REAL old log-probs of the rollout policy: ratio != 1
    assert abs(rec["ratio_mean"] - 1.0) > 1e-6
    assert abs(rec["item_ratio_mean"] - 1.0) > 1e-6
    for k in ("reward", "reward_ndcg", "reward_prob", "adv_mean", "adv_std", "token_loss", "item_loss",
              "reasoning_len", "tokens_per_s", "rollout_s", "reward_fwd_s", "update_s"):
        assert math.isfinite(rec[k]), k


def test_first_pass_ratio_is_one_and_old_logprobs_are_real(ds, tmp_path):
    tr = _trainer(ds, tmp_path, mu=1)
    rec = tr.recpo_step(tr.batch_rows(tr.ds.split("train")))
    assert rec["ratio_mean"] == pytest.approx(1.0, abs=1e-5)
    assert rec["clip_frac"] == 0.0


def test_clipping_acts_with_large_updates(ds, tmp_path):
    tr = _trainer(ds, tmp_path, mu=3, lr=0.3, grad_clip=100.0, kl_coef=0.1)
    rec = tr.recpo_step(tr.batch_rows(tr.ds.split("train")))
    assert rec["clip_frac"] > 0.0
    assert rec["kl"] > 0.0  # the adapter moved away from the reference (adapter disabled)


def test_warmup_is_applied(ds, tmp_path):
    tr = _trainer(ds, tmp_path, warmup_steps=4, schedule="constant", lr=1e-2)
    assert tr.sched.get_last_lr()[0] == 0.0
    tr.recpo_step(tr.batch_rows(tr.ds.split("train")))
    assert tr.sched.get_last_lr()[0] == pytest.approx(1e-2 / 4)


def test_kill_and_resume_equals_straight_run(ds, tmp_path):
    p = tiny_params(steps=3, eval_every=2, checkpoint_every=1, item_refresh_every=2, group_size=2,
                    max_reasoning_tokens=4)
    m_straight = train_r2ec("r2ec", ds, p, tmp_path / "straight", None, progress=False, dvclive=False)

    with pytest.raises(Killed):
        train_r2ec("r2ec", ds, p, tmp_path / "resumed", None, progress=False, dvclive=False, hook=kill_at(2))
    assert load_checkpoint(tmp_path / "resumed" / "last")["step"] == 2
    m_resumed = train_r2ec("r2ec", ds, p, tmp_path / "resumed", None, progress=False, dvclive=False)
    a = load_checkpoint(tmp_path / "straight" / "last")
    b = load_checkpoint(tmp_path / "resumed" / "last")
    assert a["step"] == b["step"] == 3
    assert a["trainable"].keys() == b["trainable"].keys()
    for k in a["trainable"]:
        assert torch.equal(a["trainable"][k], b["trainable"][k]), k
    assert m_straight == m_resumed
    log_a = [r["step"] for r in map(json.loads, open(tmp_path / "straight" / "train_log.jsonl"))]
    log_b = [r["step"] for r in map(json.loads, open(tmp_path / "resumed" / "train_log.jsonl"))]
    assert log_a == log_b == [0, 1, 2]


@pytest.mark.parametrize("method", ["r2ec", "r2ec_zeroshot", "r2ec_no_reasoning", "r2ec_no_rd", "r2ec_no_rc",
                                    "r2ec_cls_head"])
def test_variant_writes_run_outputs(ds, tmp_path, method):
    p = tiny_params(steps=1, eval_every=1, group_size=2, batch_size=2, max_reasoning_tokens=3)
    m = train_r2ec(method, ds, p, tmp_path, tmp_path / "cache", progress=False, dvclive=(method == "r2ec"))
    on_disk = json.loads((tmp_path / "metrics.json").read_text())
    assert on_disk == json.loads(json.dumps(m))  # what the run returns is what it wrote
    prompts = on_disk.pop("prompts")  # user prompts rendered / cut to llm.max_prompt_tokens, per stage
    assert set(on_disk) == {"valid", "test"} and "N@10" in on_disk["test"]
    c = prompts["test"]  # the final test pass (a resumed run repeats only that pass)
    assert set(prompts) == {"test"} and c["prompts"] > 0 and 0 <= c["truncated"] <= c["prompts"]
    assert c["longest_tokens"] > 0
    ranks = pl.read_parquet(tmp_path / "ranks.parquet")
    assert set(ranks["split"].unique()) == {"valid", "test"}
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert cfg["run"]["method"] == method
    if method != "r2ec_zeroshot":
        log = [json.loads(line) for line in open(tmp_path / "train_log.jsonl")]
        assert len(log) == 1 and log[0]["step"] == 0
        assert 0 <= log[0]["prompts_truncated"] <= p.recpo.batch_size
        assert (tmp_path / "best" / "adapter" / "adapter_config.json").exists()
    if method == "r2ec":
        assert (tmp_path / "dvclive").is_dir()


@pytest.mark.filterwarnings("ignore:Detected call of")
@pytest.mark.parametrize("uniform_negatives", [0, 3])
def test_micro_batching_gives_the_full_batch_gradient(ds, tmp_path, uniform_negatives):
    grads = []
    for mb in (0, 3):
        tr = _trainer(ds, tmp_path / str(mb), mu=1, micro_batch_size=mb, uniform_negatives=uniform_negatives)
        g = torch.Generator().manual_seed(0)
        with torch.no_grad():  # non-zero B so that every LoRA matrix gets a gradient
            for n, p in tr.policy.named_parameters():
                if "lora_B" in n:
                    p.copy_(torch.randn(p.shape, generator=g) * 0.05)
        captured = {}
        tr.opt.step = lambda: captured.update({n: p.grad.clone() for n, p in tr.policy.named_parameters()
                                              if p.requires_grad})
        tr.recpo_step(tr.batch_rows(tr.ds.split("train")))
        grads.append(captured)
    a, b = grads
    assert a.keys() == b.keys() and len(a) > 0
    for n in a:
        assert a[n].abs().sum() > 0, n
        assert torch.allclose(a[n], b[n], atol=1e-6, rtol=1e-3), n


def test_checkpoint_of_other_params_is_not_resumed(ds, tmp_path):
    p = tiny_params(steps=1, eval_every=1, group_size=2, max_reasoning_tokens=2)
    train_r2ec("r2ec", ds, p, tmp_path, None, progress=False, dvclive=False)
    first = load_checkpoint(tmp_path / "last")
    p2 = with_recpo(p, lr=0.5)
    train_r2ec("r2ec", ds, p2, tmp_path, None, progress=False, dvclive=False)
    second = load_checkpoint(tmp_path / "last")
    assert first["fingerprint"] != second["fingerprint"]
    assert second["step"] == 1  # retrained from scratch with the new params, not "already done"
    assert any(not torch.equal(first["trainable"][k], second["trainable"][k]) for k in first["trainable"])


def test_uniform_negatives_are_seeded_exclude_targets_and_join_the_item_loss(ds, tmp_path):
    tr = _trainer(ds, tmp_path, uniform_negatives=3)
    neg = tr._negative_ids([1, 2])
    assert len(neg) == 3 and not {1, 2} & set(neg) and neg == tr._negative_ids([1, 2])  # seeded per step
    tr.step += 1
    assert tr._negative_ids([1, 2]) != neg or tr.ds.n_items <= 5
    seen = []
    encode = tr.items.vectors
    tr.items.vectors = lambda ids: (seen.append(list(ids)), encode(ids))[1]
    rec = tr.recpo_step(tr.batch_rows(tr.ds.split("train")))
    assert math.isfinite(rec["item_loss"])
    assert seen and all(len(ids) == len(set(ids)) and len(ids) > 3 for ids in seen)  # targets + 3 negatives
    assert _trainer(ds, tmp_path / "off", uniform_negatives=0)._negative_ids([1]) == []


def test_bf16_autocast_step_keeps_float32_scores_and_ratio_one(ds, tmp_path):
    import dataclasses
    p = tiny_params(mu=1)
    p = dataclasses.replace(p, llm=dataclasses.replace(p.llm, autocast="bf16"))
    tr = _Trainer("r2ec", ds, p, tmp_path, None, False, False, None)
    before = _lora(tr)
    rec = tr.recpo_step(tr.batch_rows(tr.ds.split("train")))
    assert tr.acc.mixed_precision == "bf16"
    assert rec["ratio_mean"] == pytest.approx(1.0, abs=1e-2)
    assert any(not torch.equal(before[n], v) for n, v in _lora(tr).items())
    with tr.autocast():
        s = tr.scores_of(torch.randn(2, tr.policy.config.hidden_size))
    assert s.dtype == torch.float32


@pytest.mark.parametrize("uniform_negatives", [0, 3])
def test_contrastive_training_fits_a_fixed_batch(ds, tmp_path, uniform_negatives):
    # the learning signal reaches the encoder: repeated steps on one batch drive its InfoNCE loss down
    # (too large a step, e.g. lr 1e-2 here, collapses every vector onto one direction: loss -> ln K, uniform)
    tr = _Trainer("r2ec_no_reasoning", ds, tiny_params(batch_size=4, lr=3e-3, uniform_negatives=uniform_negatives),
                  tmp_path, None, False, False, None)
    rows = tr.batch_rows(tr.ds.split("train"))
    losses = [tr.contrastive_step(rows)["item_loss"] for _ in range(30)]
    assert min(losses[-5:]) < 0.6 * losses[0], losses


def test_logq_correction_offsets_the_contrastive_candidates_by_their_sampling_chance(ds, tmp_path):
    import dataclasses

    import numpy as np
    p = tiny_params(batch_size=4, lr=3e-3)
    p = dataclasses.replace(p, recpo=dataclasses.replace(p.recpo, uniform_negatives=3),
                            contrastive=dataclasses.replace(p.contrastive, logq_correction=True, batch_size=4,
                                                            uniform_negatives=3))
    tr = _Trainer("r2ec_no_reasoning", ds, p, tmp_path / "on", None, False, False, None)
    c = np.bincount(ds.split("train")["target_item_id"].to_numpy(), minlength=ds.n_items + 1)
    share = c / c.sum()
    want = np.log(1 - (1 - share[[1, 2]]) ** 4 + 3 / ds.n_items)  # q = 1 - (1 - p)^B + U / N
    assert tr.candidate_log_q([1, 2]).tolist() == pytest.approx(want.tolist(), rel=1e-5)
    rows = tr.batch_rows(tr.ds.split("train"))
    off = _Trainer("r2ec_no_reasoning", ds, dataclasses.replace(
        p, contrastive=dataclasses.replace(p.contrastive, logq_correction=False)), tmp_path / "off", None, False,
        False, None)
    a, b = tr.contrastive_step(rows), off.contrastive_step(rows)
    assert math.isfinite(a["item_loss"]) and a["item_loss"] != pytest.approx(b["item_loss"])
    assert off.fingerprint() != tr.fingerprint()
    rp = _Trainer("r2ec", ds, p, tmp_path / "rp", None, False, False, None)
    assert not rp.logq  # the RecPO item loss stays the paper's


def test_popularity_prior_adds_smoothed_log_share_to_scores_and_item_losses(ds, tmp_path):
    import dataclasses

    import numpy as np
    p = tiny_params(batch_size=4, lr=3e-3, popularity_prior=0.5, uniform_negatives=2)
    p = dataclasses.replace(p, contrastive=dataclasses.replace(p.contrastive, logq_correction=True, batch_size=4,
                                                               uniform_negatives=2))
    tr = _Trainer("r2ec_no_reasoning", ds, p, tmp_path / "on", None, False, False, None)
    c = np.bincount(ds.split("train")["target_item_id"].to_numpy(), minlength=ds.n_items + 1).astype(float)
    c[0] = 0.0
    want = 0.5 * np.log((c[1:] + 1) / (c.sum() + ds.n_items))  # add-one smoothing over the N items
    lp = tr.log_prior()
    assert lp[0] == float("-inf") and lp[1:].tolist() == pytest.approx(want.tolist(), rel=1e-5)
    off = _Trainer("r2ec_no_reasoning", ds, dataclasses.replace(p, recpo=dataclasses.replace(
        p.recpo, popularity_prior=0.0)), tmp_path / "off", None, False, False, None)
    assert off.log_prior() is None and off.fingerprint() != tr.fingerprint()
    tr.refresh_table()
    off.table, off.table_step = tr.table, tr.step
    user = torch.randn(3, tr.table.shape[1])
    diff = tr.scores_of(user) - off.scores_of(user)
    assert diff[:, 1:].flatten().tolist() == pytest.approx(want.tolist() * 3, rel=1e-4, abs=1e-5)
    # the item loss sees the prior minus log q (the sampling correction), candidate by candidate
    assert tr.item_offset([2, 5]).tolist() == pytest.approx(
        (lp[[2, 5]] - tr.candidate_log_q([2, 5])).tolist(), rel=1e-6)
    rows = tr.batch_rows(tr.ds.split("train"))
    a, b = tr.contrastive_step(rows), off.contrastive_step(rows)
    assert math.isfinite(a["item_loss"]) and a["item_loss"] != pytest.approx(b["item_loss"])
    rp = _Trainer("r2ec", ds, p, tmp_path / "rp", None, False, False, None)
    rec = rp.recpo_step(rp.batch_rows(rp.ds.split("train")))  # rewards and the RecPO item loss see it too
    assert math.isfinite(rec["item_loss"]) and math.isfinite(rec["reward"])
    assert rp.item_offset([2]).tolist() == pytest.approx(lp[[2]].tolist())  # no log q in the RecPO item loss
    ch = _Trainer("r2ec_cls_head", ds, p, tmp_path / "ch", None, False, False, None)
    u = torch.randn(2, ch.cls.in_features)
    with torch.no_grad():
        want_h = torch.log_softmax(ch.cls(u)[:, 1:] + lp[1:], -1)[[0, 1], [2, 4]]  # targets 3 and 5
        assert ch.rec.catalogue_logprob(u, torch.tensor([3, 5])).tolist() == pytest.approx(want_h.tolist(), rel=1e-5)
        assert (ch.scores_of(u) - ch.cls(u).float())[:, 1:].flatten().tolist() == pytest.approx(
            lp[1:].tolist() * 2, rel=1e-4, abs=1e-5)


def test_contrastive_section_sets_the_no_reasoning_budget(ds, tmp_path):
    import dataclasses
    p = tiny_params(lr=1e-3)
    p = dataclasses.replace(p, contrastive=dataclasses.replace(p.contrastive, lr=7e-4, batch_size=3))
    nr = _Trainer("r2ec_no_reasoning", ds, p, tmp_path / "a", None, False, False, None)
    assert nr.rc.lr == 7e-4 and nr.rc.batch_size == 3 and nr.opt.param_groups[0]["initial_lr"] == 7e-4
    assert nr.rc.tau == p.recpo.tau  # keys the section does not name stay recpo's
    rp = _Trainer("r2ec", ds, p, tmp_path / "b", None, False, False, None)
    assert rp.rc.lr == 1e-3 and rp.rc.batch_size == p.recpo.batch_size


def test_warm_start_loads_the_contrastive_adapter_and_table(ds, tmp_path):
    from r2ec.errors import UserError
    p = tiny_params(steps=2, eval_every=2, lr=3e-3)
    train_r2ec("r2ec_no_reasoning", ds, p, tmp_path / "r2ec_no_reasoning", None, progress=False, dvclive=False)
    src = torch.load(tmp_path / "r2ec_no_reasoning/best/trainable.pt")
    assert any(v.abs().sum() > 0 for k, v in src.items() if "lora_B" in k)  # it trained
    pw = with_recpo(p, warm_start="r2ec_no_reasoning")
    tr = _Trainer("r2ec", ds, pw, tmp_path / "r2ec", None, False, False, None)
    tr.warm_start()
    for k, v in _lora(tr).items():
        torch.testing.assert_close(v, src[f"policy/{k}"])
    from r2ec.llm.encoder import load_item_table
    torch.testing.assert_close(tr.table, load_item_table(tmp_path / "r2ec_no_reasoning/best/item_table.pt")[0])
    assert tr.version == 1  # the inference copy re-merges
    cold = _Trainer("r2ec", ds, pw, tmp_path / "other" / "r2ec", None, False, False, None)
    with pytest.raises(UserError, match="recpo.warm_start"):
        cold.warm_start()


def test_time_budget_stops_validates_and_logs_strict_json(ds, tmp_path):
    p = tiny_params(steps=50, eval_every=50, max_minutes=1e-6)
    train_r2ec("r2ec_no_reasoning", ds, p, tmp_path, None, progress=False, dvclive=False)

    def strict(line):
        return json.loads(line, parse_constant=lambda c: pytest.fail(f"non-JSON constant {c}"))
    log = [strict(line) for line in open(tmp_path / "train_log.jsonl")]
    valid = [strict(line) for line in open(tmp_path / "valid_log.jsonl")]
    assert [r["step"] for r in log] == [0] and [r["step"] for r in valid] == [1]  # stopped at once, validated
    assert "reward" not in log[0] and log[0]["elapsed_s"] > 0 and valid[0]["elapsed_s"] > 0


def test_centring_scores_ignore_a_shared_offset():
    from r2ec.llm.encoder import cosine_scores, table_center
    g = torch.Generator().manual_seed(0)
    table = torch.cat([torch.zeros(1, 8), torch.randn(6, 8, generator=g)])
    user = torch.randn(2, 8, generator=g)
    shift = 50 * torch.randn(8, generator=g)  # a dominant direction every vector shares
    shifted = table.clone()
    shifted[1:] += shift
    a = cosine_scores(user, table, 0.02, table_center(table))
    b = cosine_scores(user + shift, shifted, 0.02, table_center(shifted))
    torch.testing.assert_close(a, b, atol=1e-3, rtol=1e-4)
    c = table[1:].mean(0)
    u = torch.nn.functional.normalize(user - c, dim=-1)
    v = torch.nn.functional.normalize(table[1:] - c, dim=-1)
    torch.testing.assert_close(a[:, 1:], u @ v.T / 0.02)
    plain = cosine_scores(user + shift, shifted, 0.02)
    assert float(plain[:, 1:].std()) < 0.2 * float(b[:, 1:].std())  # uncentred, the offset flattens the scores


def test_separate_user_and_item_centres():
    from r2ec.llm.encoder import cosine_scores, table_center
    from r2ec.train.losses import in_batch_target_logprob
    g = torch.Generator().manual_seed(1)
    table = torch.cat([torch.zeros(1, 8), torch.randn(6, 8, generator=g)])
    user = torch.randn(3, 8, generator=g)
    cu, ci = user.mean(0), table_center(table)
    s = cosine_scores(user, table, 0.1, torch.stack([cu, ci]))
    u = torch.nn.functional.normalize(user - cu, dim=-1)
    v = torch.nn.functional.normalize(table[1:] - ci, dim=-1)
    torch.testing.assert_close(s[:, 1:], u @ v.T / 0.1)
    assert s[:, 0].isneginf().all()
    # the users' own shared offset cancels; the item mean would not remove it
    shift = 50 * torch.randn(8, generator=g)
    torch.testing.assert_close(cosine_scores(user + shift, table, 0.1, torch.stack([cu + shift, ci])), s,
                               atol=1e-4, rtol=1e-4)
    lp = in_batch_target_logprob(user, table[1:4], torch.tensor([0, 1, 2]), 0.1, torch.stack([cu, ci]))
    torch.testing.assert_close(lp, torch.log_softmax(s[:, 1:4], -1).diagonal())


def test_reasoning_scorer_reads_the_answer_state_off_the_generation_cache(ds, tmp_path):
    """The evaluation scorer of a reasoning variant equals the two-pass path (generate, then a fresh forward over
    prompt + reasoning + <answer>) that an engine without ``answer_hidden`` (vLLM) takes."""
    tr = _trainer(ds, tmp_path)
    tr.recpo_step(tr.batch_rows(tr.ds.split("train")))  # a trained (non-identity) adapter
    tr.refresh_table()
    batch = tr.ds.split("test").head(5)
    one_pass = tr.scorer(batch)
    tr.users.gen_kw.discard("answer_hidden")
    two_pass = tr.scorer(batch)
    assert torch.isfinite(one_pass[:, 1:]).all()
    assert torch.allclose(one_pass, two_pass, atol=1e-3)


@pytest.mark.parametrize("method", ["r2ec", "r2ec_no_reasoning"])
def test_r2ec_selects_on_its_own_valid_subsample_and_tests_on_the_shared_one(ds, tmp_path, method):
    """``recpo.valid_max_samples`` replaces ``eval.valid_max_samples`` for the R2ec variants' validation only: the
    seeded subsample of that size (the shared evaluator's), while the test split keeps ``eval.max_samples``."""
    import dataclasses
    from r2ec.eval.evaluator import evaluation_samples
    p = tiny_params(steps=0, valid_max_samples=4)
    p = dataclasses.replace(p, eval=dataclasses.replace(p.eval, valid_max_samples=2, max_samples=3))
    train_r2ec(method, ds, p, tmp_path, None, progress=False, dvclive=False)
    ranks = pl.read_parquet(tmp_path / "ranks.parquet")
    want = evaluation_samples(ds, "valid", dataclasses.replace(p.eval, valid_max_samples=4))["sample_id"].to_list()
    assert sorted(ranks.filter(pl.col("split") == "valid")["sample_id"].to_list()) == sorted(want)
    assert len(want) == 4 < ds.split("valid").height
    assert ranks.filter(pl.col("split") == "test").height == 3
    assert json.loads((tmp_path / "metrics.json").read_text())["valid"]["n_samples"] == 4


def test_validation_breaks_n10_ties_by_full_ranking_ndcg(ds, tmp_path):
    """Equal valid N@10 (a handful of hits) keeps the earlier step only when its full-ranking NDCG is not lower."""
    tr = _trainer(ds, tmp_path)
    saved = []
    tr.save_best = lambda metrics, ranks: saved.append(tr.step)
    script = iter([[1, 50, 100], [1, 20, 30], [1, 60, 900], [2, 2, 2]])  # N@10 1/3, 1/3, 1/3, 0.63

    def fake_evaluate(split):
        r = next(script)
        ranks = pl.DataFrame({"split": ["valid"] * 3, "sample_id": [0, 1, 2], "rank": r})
        return {"N@10": float(sum(1 / math.log2(x + 1) for x in r if x <= 10) / 3), "n_samples": 3}, ranks

    tr.evaluate = fake_evaluate
    for step in range(4):
        tr.step = step
        tr.validate()
    assert saved == [0, 1, 3]  # step 1 ties step 0 on N@10 and ranks its misses higher; step 2 ties, ranks lower
    log = [json.loads(line) for line in open(tmp_path / "valid_log.jsonl")]
    assert [r["improved"] for r in log] == [True, True, False, True]
    want = sum(1 / math.log2(x + 1) for x in (1, 20, 30)) / 3
    assert log[1]["N@all"] == pytest.approx(want)
    assert tr.best_step == 3 and tr.bad_evals == 0


@pytest.mark.parametrize("inference_copy", [False, True])
def test_shared_prefix_user_vectors_equal_the_full_forward(ds, tmp_path, inference_copy):
    import dataclasses
    p = tiny_params()
    p = dataclasses.replace(p, llm=dataclasses.replace(p.llm, inference_copy=inference_copy, max_prompt_tokens=4096))
    off = _Trainer("r2ec_no_reasoning", ds, p, tmp_path / "off", None, False, False, None)
    on = _Trainer("r2ec_no_reasoning", ds, dataclasses.replace(p, llm=dataclasses.replace(p.llm, shared_prefix=True)),
                  tmp_path / "on", None, False, False, None)
    prompts = off.prompts_of(ds.split("train").head(11))  # 2 chunks of 8, rows of several lengths
    assert len({len(x) for x in prompts}) > 1
    from r2ec.llm.encoder import shared_prefix_len
    assert shared_prefix_len(prompts) > 10  # the chat template and the instruction
    with torch.no_grad():
        torch.testing.assert_close(on.user_vectors(prompts, None), off.user_vectors(prompts, None),
                                   atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------------------------------------- diagnostics
DIAG_KEYS = {  # key: (low, high) of its range
    "reward": (0, 1), "reward_std": (0, 1), "reward_ndcg": (0, 1), "reward_ndcg_std": (0, 1),
    "reward_prob": (0, 1), "reward_prob_std": (0, 1), "reward_best": (0, 1), "flat_group_frac": (0, 1),
    "flat_rank_frac": (0, 1), "adv_abs_mean": (0, math.inf), "adv_shuffled_frac": (0, 1),
    "clip_frac": (0, 1), "item_clip_frac": (0, 1), "ratio_mean": (1e-12, math.inf),
    "item_ratio_mean": (1e-12, math.inf), "kl_ref": (0, math.inf), "kl": (0, math.inf),
    "entropy": (0, math.inf), "reasoning_len": (0, math.inf), "forced_frac": (0, 1), "cut_frac": (0, 1),
    "grad_norm": (0, math.inf), "mean_rank": (1, math.inf), "diag_s": (0, math.inf),
}


@pytest.mark.parametrize("kw", [dict(mu=1), dict(mu=2, kl_coef=0.1, advantage="rloo")])
def test_recpo_step_logs_every_diagnostic_finite_and_in_range(ds, tmp_path, kw):
    tr = _trainer(ds, tmp_path, **kw)
    rec = tr.recpo_step(tr.batch_rows(tr.ds.split("train")))
    for k, (lo, hi) in DIAG_KEYS.items():
        assert k in rec, k
        assert math.isfinite(rec[k]) and lo <= rec[k] <= hi, (k, rec[k])
    assert rec["mean_rank"] <= ds.n_items
    assert rec["reasoning_len"] <= tr.rc.max_reasoning_tokens
    assert rec["cut_frac"] <= rec["forced_frac"]
    assert rec["adv_shuffled_frac"] == 0.0
    assert rec["entropy"] <= math.log(tr.policy.get_output_embeddings().weight.shape[0]) + 1e-4
    if kw["mu"] == 1:  # before any update the rollout policy is the policy: ratio 1, nothing clipped
        assert rec["ratio_mean"] == pytest.approx(1.0, abs=1e-5) and rec["clip_frac"] == 0.0


def test_kl_ref_is_zero_for_the_base_model_and_entropy_leaves_logprobs_unchanged(ds, tmp_path):
    from r2ec.llm.rollout import completion_logprobs
    tr = _trainer(ds, tmp_path)
    pairs = [([1, 2, 3, 4], [5, 6, tr.answer_id]), ([7, 8], [9, tr.answer_id])]
    tr.policy.eval()
    with torch.no_grad():
        plain = completion_logprobs(tr.policy, pairs, 1.3, pad_id=tr.pad_id)
        ent = []
        with_ent = completion_logprobs(tr.policy, pairs, 1.3, pad_id=tr.pad_id, entropy=ent)
    assert all(torch.equal(a, b) for a, b in zip(plain, with_ent))
    assert [e.shape for e in ent] == [p.shape for p in plain]
    assert all(bool((e >= 0).all()) for e in ent)
    # LoRA starts with B = 0: the adapted policy IS the base model, so the first step's KL to it is 0
    rec = tr.recpo_step(tr.batch_rows(tr.ds.split("train")))
    assert rec["kl_ref"] == pytest.approx(0.0, abs=1e-6)
    rec = tr.recpo_step(tr.batch_rows(tr.ds.split("train")))
    assert rec["kl_ref"] > 0.0


def _capture_update_pass(monkeypatch):
    import r2ec.recpo.step as S
    seen = []
    real = S.update_pass

    def spy(tr, pairs, old_logp, cmask, ref_logp, tok_adv, item_adv, best_idx, *rest):
        seen.append({"tok_adv": tok_adv.clone(), "item_adv": item_adv.clone(), "best_idx": best_idx.clone()})
        return real(tr, pairs, old_logp, cmask, ref_logp, tok_adv, item_adv, best_idx, *rest)
    monkeypatch.setattr(S, "update_pass", spy)
    return seen


def test_shuffle_advantages_permutes_the_token_advantages_and_leaves_the_item_loss(ds, tmp_path, monkeypatch):
    seen = _capture_update_pass(monkeypatch)
    recs = {}
    for shuffle in (False, True):
        tr = _trainer(ds, tmp_path / str(shuffle), batch_size=3, shuffle_advantages=shuffle)
        torch.manual_seed(0)
        recs[shuffle] = tr.recpo_step(tr.batch_rows(tr.ds.split("train")))
    plain, shuf = seen
    true_adv = plain["tok_adv"]  # unshuffled: the token loss gets the true advantages
    assert torch.equal(plain["item_adv"], true_adv[plain["best_idx"]])
    assert true_adv.abs().sum() > 0
    # same rollouts and rewards (same seed): the shuffled arm's token advantages are a permutation of the true ones
    assert sorted(shuf["tok_adv"].tolist()) == pytest.approx(sorted(true_adv.tolist()))
    assert not torch.equal(shuf["tok_adv"], true_adv)
    # ... while the item loss gets the true advantages of the same best trajectories, and its value is unchanged
    assert torch.equal(shuf["best_idx"], plain["best_idx"]) and torch.equal(shuf["item_adv"], plain["item_adv"])
    assert recs[True]["item_loss"] == pytest.approx(recs[False]["item_loss"], abs=1e-7)
    assert recs[True]["item_ratio_mean"] == pytest.approx(recs[False]["item_ratio_mean"])
    assert recs[True]["reward"] == recs[False]["reward"]
    assert recs[True]["adv_shuffled_frac"] > 0 and recs[False]["adv_shuffled_frac"] == 0
    assert recs[True]["token_loss"] != pytest.approx(recs[False]["token_loss"])


def test_item_loss_coef_zero_leaves_the_token_loss_alone(ds, tmp_path, monkeypatch):
    """``recpo.item_loss_coef = 0`` (RL on the reasoning alone) updates the LoRA exactly as a zero item-loss
    advantage does (no item-loss gradient); 1 (the paper's sum) updates it differently."""
    import r2ec.recpo.step as S
    real = S.update_pass

    def no_item(tr, pairs, old_logp, cmask, ref_logp, tok_adv, item_adv, *rest):
        return real(tr, pairs, old_logp, cmask, ref_logp, tok_adv, item_adv * 0.0, *rest)

    after = {}
    for name, coef in (("coef0", 0.0), ("zero_adv", 1.0), ("coef1", 1.0)):
        with monkeypatch.context() as m:
            if name == "zero_adv":
                m.setattr(S, "update_pass", no_item)
            tr = _trainer(ds, tmp_path / name, batch_size=3, item_loss_coef=coef)
            torch.manual_seed(0)
            rec = tr.recpo_step(tr.batch_rows(tr.ds.split("train")))
            assert math.isfinite(rec["item_loss"])
            after[name] = _lora(tr)
    assert all(torch.equal(after["coef0"][n], after["zero_adv"][n]) for n in after["coef0"])
    assert any(not torch.equal(after["coef0"][n], after["coef1"][n]) for n in after["coef0"])
