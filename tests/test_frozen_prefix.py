"""Frozen-prefix item encoding equals a full forward, lets gradients reach the adapted layers, and is what the
trainer's item table and item losses use when ``llm.frozen_prefix`` is on."""

import dataclasses

import pytest
import torch

from r2ec.config import LoraCfg
from r2ec.llm.backbone import add_lora, answer_token_id, ensure_special_tokens
from r2ec.llm.encoder import hidden_at_answer
from r2ec.llm.frozen_prefix import FrozenPrefix, first_adapted_layer
from r2ec.llm.tiny import tiny_model_and_tokenizer
from r2ec.recpo.trainer import _Trainer
from recpo_fixtures import tiny_dataset, tiny_params


def _policy(last_layers=1, layers=3):
    model, tok = tiny_model_and_tokenizer(seed=0, layers=layers)
    ensure_special_tokens(model, tok)
    policy = add_lora(model, LoraCfg(r=4, alpha=8, dropout=0.0, last_layers=last_layers), seed=0)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # a non-identity adapter, so the adapted layers matter
        for n, q in policy.named_parameters():
            if "lora_B" in n:
                q.add_(torch.randn(q.shape, generator=g) * 0.5)
    policy.eval()
    return policy, tok


def _prompts(tok, n=5):
    aid = answer_token_id(tok)
    g = torch.Generator().manual_seed(0)
    return [torch.randint(5, 200, (int(k),), generator=g).tolist() + [aid] for k in (3, 7, 4, 9, 5)[:n]], aid


def test_prefix_plus_adapted_layers_equals_a_full_forward():
    policy, tok = _policy(last_layers=1, layers=3)
    assert first_adapted_layer(policy) == 2
    prompts, aid = _prompts(tok)
    pf = FrozenPrefix(policy, 2, prompts, aid, tok.pad_token_id, batch_size=2)
    assert pf.ok
    with torch.no_grad():
        full = hidden_at_answer(policy, prompts, aid, tok.pad_token_id, batch_size=16)
        fast = pf.vectors(policy, [0, 1, 2, 3, 4])
        table = pf.table(policy, batch_size=3)
    torch.testing.assert_close(fast, full, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(table[1:], full, atol=1e-5, rtol=1e-5)
    assert torch.equal(table[0], torch.zeros_like(table[0]))
    # any subset and order: rows follow idx
    torch.testing.assert_close(pf.vectors(policy, [3, 0]).detach(), full[[3, 0]], atol=1e-5, rtol=1e-5)


def test_gradient_reaches_only_the_adapted_layers():
    policy, tok = _policy(last_layers=1, layers=3)
    prompts, aid = _prompts(tok)
    pf = FrozenPrefix(policy, 2, prompts, aid, tok.pad_token_id)
    policy.zero_grad()
    pf.vectors(policy, [1, 4]).pow(2).sum().backward()
    grads = {n: q.grad for n, q in policy.named_parameters() if q.requires_grad}
    assert grads and all(g is not None and g.abs().sum() > 0 for n, g in grads.items() if "lora_A" in n)
    # the cached states are constants: a second call after a weight change sees the new adapted layers only
    before = pf.vectors(policy, [1]).detach()
    with torch.no_grad():
        for n, q in policy.named_parameters():
            if "lora_B" in n:
                q.mul_(2.0)
    assert not torch.allclose(pf.vectors(policy, [1]).detach(), before)


def test_a_disagreeing_prefix_is_refused():
    policy, tok = _policy(last_layers=1, layers=3)
    prompts, aid = _prompts(tok)
    pf = FrozenPrefix(policy, 2, prompts, aid, tok.pad_token_id)
    pf.states = [s + 5.0 for s in pf.states]  # as if the bottom layers had changed since the cache was built
    assert not pf._agrees(policy, [0, 1])


@pytest.mark.parametrize("method", ["r2ec_no_reasoning", "r2ec"])
def test_trainer_uses_the_prefix_for_tables_and_item_losses(tmp_path, method):
    ds = tiny_dataset()

    def trainer(on, sub):
        p = tiny_params(batch_size=3, lr=3e-3, uniform_negatives=2)
        p = dataclasses.replace(p, llm=dataclasses.replace(p.llm, frozen_prefix=on),
                                lora=dataclasses.replace(p.lora, last_layers=1))
        return _Trainer(method, ds, p, tmp_path / sub, None, False, False, None)

    on, off = trainer(True, "on"), trainer(False, "off")
    rows = on.batch_rows(ds.split("train"))
    rec_on = on.train_step(rows)
    rec_off = off.train_step(rows)
    assert on.prefix() is not None and off.prefix() is None
    assert rec_on["item_loss"] == pytest.approx(rec_off["item_loss"], rel=1e-4, abs=1e-5)
    on.step = off.step = 5
    on.refresh_table(), off.refresh_table()
    torch.testing.assert_close(on.table, off.table, atol=1e-4, rtol=1e-4)


def test_prefix_states_are_cached_on_disk_and_checked_when_loaded(tmp_path, caplog):
    ds = tiny_dataset()
    p = tiny_params(batch_size=3)
    p = dataclasses.replace(p, llm=dataclasses.replace(p.llm, frozen_prefix=True),
                            lora=dataclasses.replace(p.lora, last_layers=1))
    cache = tmp_path / "cache"
    first = _Trainer("r2ec_no_reasoning", ds, p, tmp_path / "a", cache, False, False, None)
    built = first.prefix()
    (path,) = (cache / "frozen_prefix").glob("*.pt")
    second = _Trainer("r2ec", ds, p, tmp_path / "b", cache, False, False, None)
    loaded = second.prefix()
    assert loaded is not None and loaded.ok
    assert all(torch.equal(a, b) for a, b in zip(built.states, loaded.states))
    # another split (here: LoRA on two layers) does not take these states
    assert FrozenPrefix.load_states(path, built.split + 1) is None
    path.write_bytes(b"not a checkpoint")  # a corrupt cache is rebuilt, with a warning
    third = _Trainer("r2ec", ds, p, tmp_path / "c", cache, False, False, None)
    with caplog.at_level("WARNING"):
        assert third.prefix() is not None
    assert "unreadable frozen-prefix cache" in caplog.text
    assert all(torch.equal(a, b) for a, b in zip(built.states, third.prefix().states))
    assert FrozenPrefix.load_states(path, built.split) is not None  # rewritten
    pf = loaded
    with pytest.raises(ValueError, match="do not match"):
        FrozenPrefix(second.policy, pf.split, pf.prompts[:-1], pf.answer_id, pf.pad_id, states=pf.states)
