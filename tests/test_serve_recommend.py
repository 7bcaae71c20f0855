"""recommend(): a run directory with the tiny backbone (no adapter / with adapter + item table)."""

from __future__ import annotations

import json

import polars as pl
import pytest
import torch

from r2ec import config as C
from r2ec.serve.recommend import match_titles, recommend


def _run(tmp_path, method="r2ec"):
    data = tmp_path / "results" / "data" / "movielens-100k"
    data.mkdir(parents=True)
    titles = ["Toy Story (1995)", "Heat (1995)", "Casino (1995)", "Babe (1995)", "Se7en (1995)"]
    pl.DataFrame({"item_id": list(range(1, 6)), "source_id": [str(i) for i in range(5)], "title": titles,
                  "genres": [["Comedy"], ["Action"], ["Crime"], ["Family"], ["Thriller"]]}
                 ).write_parquet(data / "items.parquet")
    run = tmp_path / "results" / "runs" / "movielens-100k" / method
    run.mkdir(parents=True)
    raw = C.to_dict(C.Params())
    raw["llm"]["backbone"] = "tiny-random"
    raw["recpo"]["max_reasoning_tokens"] = 4
    (run / "config.json").write_text(json.dumps(raw))
    return run


def test_match_titles():
    cat = ["Toy Story (1995)", "Heat (1995)"]
    assert match_titles(["Heat (1995)", "toy story (1995)", "Toy Story", "zzzzzz"], cat) == [1, 0, 0, -1]


def test_recommend_tiny_run(tmp_path):
    run = _run(tmp_path)
    out = recommend(run, ["Heat", "Casino (1995)"], k=2)
    assert isinstance(out["reasoning"], str) and len(out["items"]) == 2
    ids = [i for i, _, _ in out["items"]]
    assert 2 not in ids and 3 not in ids and all(1 <= i <= 5 for i in ids)
    assert out["items"][0][2] >= out["items"][1][2]
    assert out["matched"] == [("Heat", 2), ("Casino (1995)", 3)]


def test_recommend_with_adapter_and_table(tmp_path):
    from r2ec.llm.backbone import add_lora
    from r2ec.llm.encoder import save_item_table
    from r2ec.llm.tiny import tiny_model_and_tokenizer

    run = _run(tmp_path, "some_dir_name")
    raw = json.loads((run / "config.json").read_text())
    raw["run"] = {"method": "r2ec_no_reasoning", "best_step": 3}  # the trainer's layout
    (run / "config.json").write_text(json.dumps(raw))
    model, _ = tiny_model_and_tokenizer()
    pm = add_lora(model, C.LoraCfg(r=2, alpha=4, dropout=0.0), seed=0)
    pm.save_pretrained(run / "best" / "adapter")
    table = torch.zeros(6, model.config.hidden_size)
    table[4] = 1.0  # only item 4 has a direction; others score 0 (cos with zero vector)
    save_item_table(run / "best" / "item_table.pt", table, {})
    out = recommend(run, ["Toy Story (1995)"], k=3)
    assert out["reasoning"] == ""  # no-reasoning variant: <answer> right after the prompt
    assert len(out["items"]) == 3


def test_recommend_adds_the_runs_popularity_prior(tmp_path):
    from r2ec.llm.encoder import save_item_table
    from r2ec.llm.tiny import tiny_model_and_tokenizer

    run = _run(tmp_path, "r2ec_no_reasoning")
    raw = json.loads((run / "config.json").read_text())
    raw["recpo"]["popularity_prior"] = 1.0
    (run / "config.json").write_text(json.dumps(raw))
    model, _ = tiny_model_and_tokenizer()
    save_item_table(run / "best" / "item_table.pt", torch.zeros(6, model.config.hidden_size), {})
    with pytest.raises(C.ConfigError, match="train.parquet"):
        recommend(run, ["Heat (1995)"], k=3)
    data = tmp_path / "results" / "data" / "movielens-100k"
    pl.DataFrame({"target_item_id": [5, 5, 5, 1, 1, 3, 2]}).write_parquet(data / "train.parquet")
    out = recommend(run, ["Heat (1995)"], k=3)  # every cosine is 0: the prior alone orders the items
    assert [i for i, _, _ in out["items"]] == [5, 1, 3]
    assert out["items"][0][2] == pytest.approx(torch.log(torch.tensor(4 / 12)).item(), abs=1e-5)


def test_recommend_missing_run(tmp_path):
    with pytest.raises(C.ConfigError, match="config.json"):
        recommend(tmp_path / "nope", ["a"], k=1)


def test_recommend_scores_with_the_runs_readout(tmp_path):
    from r2ec.llm.encoder import save_item_table
    from r2ec.model.readout import Readout
    from r2ec.llm.tiny import tiny_model_and_tokenizer

    run = _run(tmp_path, "r2ec_no_reasoning")
    model, _ = tiny_model_and_tokenizer()
    H = model.config.hidden_size
    table = torch.zeros(6, H)
    table[1:, 0] = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0])  # the items differ along dimension 0 only
    save_item_table(run / "best" / "item_table.pt", table, {})
    ro = Readout(H, 1, seed=0)
    with torch.no_grad():
        ro.proj.zero_()
        ro.proj[0, 0] = 1.0
        ro.user_mean.fill_(-1e3)  # every standardised user state is positive along dimension 0 ...
    torch.save(ro.state_dict(), run / "best" / "readout.pt")
    out = recommend(run, ["Heat (1995)"], k=4)  # ... so the readout orders items by their dimension 0
    assert [i for i, _, _ in out["items"]] == [5, 4, 3, 1]
