"""Classic sequential baselines: shapes, learning a synthetic pattern, resume equivalence, reload, early stop."""

from __future__ import annotations

import json

import polars as pl
import pytest
import torch

from r2ec.baselines import build_model, load_scorer, train_classic
from r2ec.baselines.seqtrain import LAST, LOG
from r2ec.config import EvalCfg, SeqModelCfg
from r2ec.eval import evaluate
from fixtures.data_fixtures import pattern_dataset
from r2ec.io import Dataset

N_ITEMS = 30
HIST = 5


def _pattern_dataset(n_users: int = 60, seq_len: int = 14, seed: int = 0) -> Dataset:
    """Each user walks 1..N in steps of +1 (wrapping) from a random start: next item = last + 1."""
    items = pl.DataFrame({"item_id": list(range(1, N_ITEMS + 1)), "source_id": [str(i) for i in range(N_ITEMS)],
                          "title": [f"item {i}" for i in range(N_ITEMS)]})
    return pattern_dataset(items, HIST, n_users, seq_len, seed)


DS = _pattern_dataset()
EVAL = EvalCfg(ks=(1, 10), batch_size=64)
FAST = dict(hidden=32, layers=1, heads=1, dropout=0.1, n_v=2, n_h=4, lr=1e-2, batch_size=64, threads=1)


@pytest.fixture(autouse=True)
def _threads():
    old = torch.get_num_threads()
    yield
    torch.set_num_threads(old)


@pytest.mark.parametrize("method", ["sasrec", "gru4rec", "caser"])
def test_forward_shapes(method):
    cfg = SeqModelCfg(hidden=16, layers=2, heads=2, n_v=2, n_h=3)
    model = build_model(method, n_items=N_ITEMS, n_users=7, max_len=HIST, cfg=cfg)
    hist = torch.tensor([[0, 0, 0, 1, 2], [3, 4, 5, 6, 7], [0, 0, 0, 0, 9]])
    out = model(hist, torch.tensor([0, 3, 7]))
    assert out.shape == (3, 16)
    assert torch.isfinite(out).all()
    assert model.item_emb.weight.shape == (N_ITEMS + 1, 16)


def test_left_padding_is_neutral():
    """Leading pads do not change the representation (zero GRU state / masked attention keys)."""
    cfg = SeqModelCfg(hidden=16, layers=2, heads=2, dropout=0.0)
    torch.manual_seed(0)
    gru = build_model("gru4rec", N_ITEMS, 1, 8, cfg).eval()
    assert torch.allclose(gru(torch.tensor([[0, 0, 0, 0, 0, 4, 5, 6]])), gru(torch.tensor([[4, 5, 6]])), atol=1e-6)
    sas = build_model("sasrec", N_ITEMS, 1, 8, cfg).eval()
    hist = torch.tensor([[0, 0, 0, 0, 0, 4, 5, 6]])
    a = sas(hist)
    with torch.no_grad():
        sas.item_emb.weight[0].normal_()  # what sits in the padded slots must not matter
    assert torch.allclose(a, sas(hist), atol=1e-5)


@pytest.mark.parametrize("method,epochs", [("sasrec", 12), ("gru4rec", 12), ("caser", 12)])
def test_learns_next_item_pattern(method, epochs, tmp_path):
    cfg = SeqModelCfg(**FAST, epochs=epochs, patience=0)
    metrics = train_classic(method, DS, cfg, EVAL, tmp_path, progress=False)
    # chance: H@1 ~ 1 / (N - history) ~ 0.04, H@10 ~ 0.4
    assert metrics["test"]["H@1"] > 0.5 and metrics["test"]["H@10"] > 0.8, metrics
    assert metrics["test"]["n_samples"] == DS.split("test").height
    for f in ("checkpoint.pt", LAST, LOG, "metrics.json", "ranks.parquet", "config.json"):
        assert (tmp_path / f).exists(), f
    log = [json.loads(line) for line in (tmp_path / LOG).read_text().splitlines()]
    assert [r["epoch"] for r in log] == list(range(1, epochs + 1))
    assert {"loss", "valid_N@10", "seconds"} <= set(log[0])
    assert json.loads((tmp_path / "metrics.json").read_text())["test"] == metrics["test"]
    ranks = pl.read_parquet(tmp_path / "ranks.parquet")
    assert ranks.height == DS.split("valid").height + DS.split("test").height
    # reloading the best checkpoint scores identically
    again, _ = evaluate(load_scorer(method, DS, tmp_path), DS, "test", EVAL, progress=False)
    assert again == metrics["test"]


@pytest.mark.parametrize("method", ["sasrec", "caser"])
def test_resume_matches_uninterrupted(method, tmp_path):
    straight = train_classic(method, DS, SeqModelCfg(**FAST, epochs=4, patience=0), EVAL, tmp_path / "a",
                             progress=False)
    # "killed" after epoch 2: a first run with epochs=2, then the same run restarted with epochs=4
    train_classic(method, DS, SeqModelCfg(**FAST, epochs=2, patience=0), EVAL, tmp_path / "b", progress=False)
    resumed = train_classic(method, DS, SeqModelCfg(**FAST, epochs=4, patience=0), EVAL, tmp_path / "b",
                            progress=False)
    assert resumed == straight
    sa = torch.load(tmp_path / "a" / LAST, weights_only=False)["model"]
    sb = torch.load(tmp_path / "b" / LAST, weights_only=False)["model"]
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    la = [{k: v for k, v in json.loads(x).items() if "seconds" not in k} for x in
          (tmp_path / "a" / LOG).read_text().splitlines()]
    lb = [{k: v for k, v in json.loads(x).items() if "seconds" not in k} for x in
          (tmp_path / "b" / LOG).read_text().splitlines()]
    assert la == lb and len(la) == 4


def test_resume_refuses_changed_settings(tmp_path):
    train_classic("gru4rec", DS, SeqModelCfg(**FAST, epochs=1), EVAL, tmp_path, progress=False)
    with pytest.raises(ValueError, match="hidden"):
        train_classic("gru4rec", DS, SeqModelCfg(**{**FAST, "hidden": 8}, epochs=2), EVAL, tmp_path,
                      progress=False)


def test_early_stopping_stops(tmp_path):
    # lr 0 never improves after epoch 1: patience 2 stops after epoch 3
    cfg = SeqModelCfg(**{**FAST, "lr": 0.0}, epochs=50, patience=2)
    train_classic("gru4rec", DS, cfg, EVAL, tmp_path, progress=False)
    log = [json.loads(line) for line in (tmp_path / LOG).read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1, 2, 3]
    assert all(r["best_epoch"] == 1 for r in log)


def test_caser_convolutions_match_recbole_form():
    """Our Conv1d / Linear convolutions are RecBole's Conv2d filters over the L x d image."""
    torch.manual_seed(0)
    L, d = 5, 8
    model = build_model("caser", N_ITEMS, 3, L, SeqModelCfg(hidden=d, n_v=2, n_h=3))
    x = torch.randn(4, L, d)
    conv_v = torch.nn.Conv2d(1, 2, (L, 1))
    conv_v.weight.data = model.conv_v.weight.data.view(2, 1, L, 1)
    conv_v.bias.data = model.conv_v.bias.data
    ref_v = conv_v(x.unsqueeze(1)).view(4, -1)
    assert torch.allclose(model.conv_v(x.transpose(1, 2)).transpose(1, 2).reshape(4, -1), ref_v, atol=1e-6)
    for h, conv in enumerate(model.conv_h, start=1):
        ref = torch.nn.Conv2d(1, 3, (h, d))
        ref.weight.data = conv.weight.data.permute(0, 2, 1).unsqueeze(1)  # [n_h, d, h] -> [n_h, 1, h, d]
        ref.bias.data = conv.bias.data
        assert torch.allclose(conv(x.transpose(1, 2)), ref(x.unsqueeze(1)).squeeze(3), atol=1e-6)
