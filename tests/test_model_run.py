"""A trained run loaded through :mod:`r2ec.model.run` (what latency times) scores as the trainer's evaluation does,
and neither it nor the item-table stage builds an optimizer."""

import pytest
import torch

from recpo_fixtures import tiny_dataset, tiny_params, with_recpo
from r2ec.model.item_table import build_item_table
from r2ec.model.run import load_run
from r2ec.recpo.trainer import R2ecTrainer, train_r2ec
from r2ec.recpo.variants import resolve


def _no_optimizer(monkeypatch):
    def refuse(*a, **k):
        raise AssertionError("an optimizer was built")
    monkeypatch.setattr(torch.optim, "AdamW", refuse)


@pytest.mark.parametrize("method", ["r2ec_no_reasoning", "r2ec"])
def test_loaded_run_scores_like_the_trainer(tmp_path, monkeypatch, method):
    ds = tiny_dataset()
    p = tiny_params(steps=1, eval_every=1)
    run = tmp_path / method
    train_r2ec(method, ds, p, run, None, progress=False, dvclive=False)
    tr = R2ecTrainer(method, ds, p, run, None, False, False, None)
    tr.load_best()
    tr.before_evaluate()
    batch = ds.split("test").head(3)
    want = tr.scorer(batch)
    _no_optimizer(monkeypatch)
    var, rc = resolve(p, method)
    got = load_run(method, var, rc, ds, p, run, None).scorer(batch)
    assert torch.equal(got, want)


def test_item_table_stage_needs_no_trainer(tmp_path, monkeypatch):
    ds = tiny_dataset()
    p = tiny_params()
    _no_optimizer(monkeypatch)
    info = build_item_table(ds, p, tmp_path / "cache", progress=False)
    table = torch.load(info["table"], map_location="cpu", weights_only=False)
    assert info["items"] == ds.n_items and table is not None


def test_cls_head_ablation_keeps_the_item_loss_under_rl_alone():
    """The classification head learns only through the item loss: with ``recpo.item_loss_coef`` 0 (RL on the
    reasoning alone) its ablation still weights it 1, while R2ec and the other ablations keep the 0."""
    p = with_recpo(tiny_params(), item_loss_coef=0.0)
    assert resolve(p, "r2ec_cls_head")[1].item_loss_coef == 1.0
    assert resolve(p, "r2ec")[1].item_loss_coef == 0.0 and resolve(p, "r2ec_no_rd")[1].item_loss_coef == 0.0
    assert resolve(with_recpo(p, item_loss_coef=0.5), "r2ec_cls_head")[1].item_loss_coef == 0.5
