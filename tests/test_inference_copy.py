"""The merged inference copy follows the policy: same outputs (fp32), close ones (bf16), re-merged on version."""

import dataclasses

import pytest

import torch

from r2ec.llm.backbone import add_lora
from r2ec.llm.encoder import hidden_at_answer
from r2ec.llm.inference_copy import InferenceCopy
from r2ec.llm.tiny import tiny_model_and_tokenizer
from r2ec.config import LoraCfg
from r2ec.recpo.trainer import _Trainer
from recpo_fixtures import tiny_dataset, tiny_params


def _policy():
    model, tok = tiny_model_and_tokenizer(seed=0)
    from r2ec.llm.backbone import ensure_special_tokens
    ensure_special_tokens(model, tok)
    return add_lora(model, LoraCfg(r=4, alpha=8, dropout=0.0), seed=0), tok


def _perturb(policy, seed=1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, q in policy.named_parameters():
            if "lora_B" in n:
                q.add_(torch.randn(q.shape, generator=g) * 0.5)


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits.float()


def test_fp32_copy_equals_policy_and_is_remerged_only_on_a_new_version():
    policy, _ = _policy()
    ids = torch.randint(5, 200, (3, 9), generator=torch.Generator().manual_seed(0))
    cp = InferenceCopy(policy, bf16=False)
    m = cp.get(0)
    assert not any(q.requires_grad for q in m.parameters())
    torch.testing.assert_close(_logits(m, ids), _logits(policy, ids), atol=1e-5, rtol=1e-5)
    _perturb(policy)
    stale = _logits(cp.get(0), ids)  # same version: not re-merged
    assert not torch.allclose(stale, _logits(policy, ids), atol=1e-3)
    torch.testing.assert_close(_logits(cp.get(1), ids), _logits(policy, ids), atol=1e-5, rtol=1e-5)


def test_bf16_copy_is_close_and_returns_float32_logits():
    policy, tok = _policy()
    _perturb(policy)
    cp = InferenceCopy(policy, bf16=True)
    m = cp.get(0)
    assert next(m.model.layers.parameters()).dtype == torch.bfloat16
    ids = torch.randint(5, 200, (2, 7), generator=torch.Generator().manual_seed(1))
    lg = _logits(m, ids)
    assert lg.dtype == torch.float32
    ref = _logits(policy, ids)
    assert torch.nn.functional.cosine_similarity(lg.flatten(1), ref.flatten(1)).min() > 0.99
    aid = tok.convert_tokens_to_ids("<answer>")
    seqs = [[5, 6, 7, aid], [8, 9, aid]]
    with torch.no_grad():
        a = hidden_at_answer(m, seqs, aid, tok.pad_token_id).float()
        b = hidden_at_answer(policy, seqs, aid, tok.pad_token_id).float()
    assert torch.nn.functional.cosine_similarity(a, b).min() > 0.99


def test_trainer_evaluates_with_the_copy_after_updates(tmp_path):
    ds = tiny_dataset()
    p = tiny_params(steps=2)
    p = dataclasses.replace(p, llm=dataclasses.replace(p.llm, inference_copy=True))
    tr = _Trainer("r2ec", ds, p, tmp_path, None, False, False, None)
    tr.recpo_step(tr.batch_rows(ds.split("train")))
    assert tr.version == 1  # one optimizer step
    model, _ = tr.infer()
    ids = torch.tensor([tr.items.item_ids[0]])
    torch.testing.assert_close(_logits(model, ids), _logits(tr.policy, ids), atol=1e-4, rtol=1e-4)
    assert tr.engine.model is model  # rollouts sampled from the merged copy


@pytest.mark.parametrize("inference_copy", [False, True])
def test_scorer_runs_several_chunks_under_bf16(tmp_path, inference_copy):
    ds = tiny_dataset()
    p = tiny_params(eval_batch_size=2, gen_batch_size=2)
    p = dataclasses.replace(p, llm=dataclasses.replace(p.llm, autocast="bf16", inference_copy=inference_copy))
    tr = _Trainer("r2ec", ds, p, tmp_path, None, False, False, None)
    tr.refresh_table()
    s = tr.scorer(ds.split("test").head(5))  # three generation chunks
    assert s.shape == (5, ds.n_items + 1) and s.dtype == torch.float32 and torch.isfinite(s[:, 1:]).all()
