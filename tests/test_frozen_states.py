"""RecPO's trajectory states below the first adapted layer (``llm.frozen_states``): the adapted-layer passes on them
equal full forwards (log-probs, user states, gradients), and a RecPO step with them matches one without."""

import dataclasses

import pytest
import torch

from r2ec.llm.frozen_states import build_states
from r2ec.llm.rollout import completion_logprobs
from r2ec.recpo.trainer import _Trainer
from recpo_fixtures import tiny_dataset, tiny_params
from test_frozen_prefix import _policy, _prompts


def _pairs(tok, G=3):
    prompts, aid = _prompts(tok)
    g = torch.Generator().manual_seed(3)
    # G completions per prompt of different lengths, each closed by <answer>
    return [(p[:-1], torch.randint(5, 200, (k,), generator=g).tolist() + [aid])
            for p in prompts for k in (1, 3, 2)[:G]], aid


@pytest.mark.parametrize("group", [3, 1])
def test_adapted_layers_on_frozen_states_equal_a_full_forward(group):
    policy, tok = _policy(last_layers=1, layers=3)
    pairs, aid = _pairs(tok)
    # group 3: each prompt once for its three completions; group 1: every pair whole
    fr = build_states(policy, 2, pairs, group, tok.pad_token_id, batch_size=4)
    assert len(fr.states) == len(pairs)
    assert [int(s.shape[0]) for s in fr.states] == [len(p) + len(c) for p, c in pairs]
    kw = dict(pad_id=tok.pad_token_id, batch_size=5, return_hidden=True, answer_id=aid)
    with torch.no_grad():
        full, h_full = completion_logprobs(policy, pairs, 1.3, **kw)
        fast, h_fast = completion_logprobs(policy, pairs, 1.3, frozen=fr, **kw)
    for a, b in zip(full, fast):
        torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(h_fast, h_full, atol=1e-5, rtol=1e-5)


def test_gradients_of_the_adapted_layers_equal_a_full_forward():
    policy, tok = _policy(last_layers=1, layers=3)
    pairs, aid = _pairs(tok)
    fr = build_states(policy, 2, pairs, 3, tok.pad_token_id)
    grads = []
    for frozen in (None, fr):
        policy.zero_grad()
        lp, h = completion_logprobs(policy, pairs, 1.0, pad_id=tok.pad_token_id, return_hidden=True, answer_id=aid,
                                    frozen=frozen)
        (torch.cat(lp).sum() + h.pow(2).mean()).backward()
        grads.append({n: q.grad.clone() for n, q in policy.named_parameters() if q.requires_grad})
    assert grads[0].keys() == grads[1].keys() and any(g.abs().sum() > 0 for g in grads[0].values())
    for n in grads[0]:
        torch.testing.assert_close(grads[1][n], grads[0][n], atol=1e-4, rtol=1e-4)


def _trainer(tmp_path, on: bool, sub: str, **recpo):
    p = tiny_params(batch_size=3, lr=3e-3, **recpo)
    p = dataclasses.replace(p, llm=dataclasses.replace(p.llm, frozen_states=on),
                            lora=dataclasses.replace(p.lora, last_layers=1))
    return _Trainer("r2ec", tiny_dataset(), p, tmp_path / sub, None, False, False, None)


def test_a_recpo_step_on_frozen_states_matches_full_forwards(tmp_path):
    kw = dict(mu=2, kl_coef=0.1)  # the reference pass and a second update pass read the states too
    on, off = _trainer(tmp_path, True, "on", **kw), _trainer(tmp_path, False, "off", **kw)
    rows = on.batch_rows(on.ds.split("train"))
    rec_on, rec_off = on.train_step(rows), off.train_step(rows)
    assert on._frozen_split > 0 and off._frozen_split == 0
    assert rec_on["frozen_split"] == on._frozen_split and rec_off["frozen_split"] == 0
    for k in ("reward", "token_loss", "item_loss", "kl", "kl_ref", "entropy", "ratio_mean", "grad_norm"):
        assert rec_on[k] == pytest.approx(rec_off[k], rel=1e-3, abs=1e-5), k
    for (n, a), (_, b) in zip(on.policy.named_parameters(), off.policy.named_parameters()):
        if a.requires_grad:
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_states_that_disagree_with_a_full_forward_are_not_used(tmp_path, monkeypatch, caplog):
    import r2ec.llm.frozen_states as fs
    real = fs.build_states

    def shifted(*a, **k):  # as if the bottom layers differed from the ones the passes run after
        st = real(*a, **k)
        return fs.FrozenStates(st.split, [s + 3.0 for s in st.states])

    monkeypatch.setattr(fs, "build_states", shifted)
    tr = _trainer(tmp_path, True, "bad")
    rows = tr.batch_rows(tr.ds.split("train"))
    with caplog.at_level("WARNING"):
        rec = tr.train_step(rows)
    assert "llm.frozen_states: disagrees with a full forward" in caplog.text
    assert tr._frozen_split == 0 and rec["frozen_split"] == 0 and rec["reward"] == rec["reward"]
