"""MovieLens-100K from the recbole wheel: parser quirks on a tiny fake wheel; the real wheel, fetched from PyPI as the
pipeline fetches it, checked against 943 users / 1,682 items / 100,000 ratings."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import polars as pl
import pytest

from fixtures.data_fixtures import fake_recbole_wheel
from r2ec.config import DataCfg
from r2ec.data import DataError
from r2ec.data.download import download_recbole_wheel
from r2ec.data.preprocess import prepare_movielens
from r2ec.io import SAMPLE_SCHEMA, load_dataset


INTER = """user_id:token\titem_id:token\trating:float\ttimestamp:float
7\t10\t4\t881250949
7\t2\t3\t881250949
7\t1\t5\t881250000
3\t2\t1\t881250949
3\t267\t2\t881251000
7\t1412\t5\t881260000
"""
ITEM = """item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq
1\tToy Story\t1995\tAnimation Children's Comedy
2\t"Quoted" Title, The\t1995\tAction
10\tRichard III\t1995\tDrama War
267\tunkonwn\tunkonwn\tunknown
1412\tLand Before Time III: The Time of the Great Giving (1995)\tV\tAnimation Children's
99\tNever Rated\t1990\tDrama
"""


def test_fake_wheel_parsing_and_tie_break(tmp_path):
    wheel = fake_recbole_wheel(tmp_path / "recbole-1.2.1-py3-none-any.whl", INTER, ITEM)
    stats = prepare_movielens(wheel, DataCfg(), tmp_path / "movielens-100k")
    ds = load_dataset(tmp_path / "movielens-100k")
    items = ds.items
    assert items["source_id"].to_list() == ["1", "2", "10", "267", "1412"]  # numeric order, unrated 99 absent
    assert items["item_id"].to_list() == [1, 2, 3, 4, 5]
    assert items["title"].to_list()[1] == '"Quoted" Title, The' and items["title"][3] == "unknown"
    assert items["year"].to_list() == [1995, 1995, 1995, None, None]
    assert items["genres"].to_list()[0] == "Animation, Children's, Comedy" and items.schema["year"] == pl.Int64
    assert stats["users"] == 2 and stats["items"] == 5 and stats["interactions"] == 6
    assert stats["timestamp_unit"] == "s" and stats["window"] is None
    allr = pl.concat([ds.split(s) for s in ("train", "valid", "test")])
    assert dict(allr.schema) == SAMPLE_SCHEMA and allr["sample_id"].to_list() == [0, 1, 2, 3]
    # user 7: t=881250000 item 1, then the tie at 881250949 broken by item id: 2 (id 2) before 10 (id 3)
    got = list(zip(allr["user_id"], allr["target_item_id"], allr["target_timestamp"]))
    assert got == [("7", 2, 881250949), ("7", 3, 881250949), ("3", 4, 881251000), ("7", 5, 881260000)]
    assert allr["history_item_ids"].to_list()[-1] == [1, 2, 3]
    assert stats["samples"] == {"train": 3, "valid": 0, "test": 1}
    # item prompt statistics come from the train targets only: item 5 (the test target) and item 1 (never a
    # target) have no train rating; nothing of the test interaction leaks
    assert items["rating_number"].to_list() == [0, 1, 1, 1, 0]
    assert items["average_rating"].to_list() == [None, 3.0, 4.0, 2.0, None]


def test_item_stats_can_be_switched_off(tmp_path):
    wheel = fake_recbole_wheel(tmp_path / "recbole-1.2.1-py3-none-any.whl", INTER, ITEM)
    prepare_movielens(wheel, dataclasses.replace(DataCfg(), movielens_item_stats=False), tmp_path / "ml")
    items = load_dataset(tmp_path / "ml").items
    assert items["rating_number"].null_count() == items.height and items["average_rating"].null_count() == 5


def test_bad_wheels(tmp_path):
    with pytest.raises(DataError, match="wheel not found"):
        prepare_movielens(tmp_path / "none.whl", DataCfg(), tmp_path / "o")
    (tmp_path / "junk.whl").write_bytes(b"not a zip")
    with pytest.raises(DataError, match=r"junk\.whl: not a readable zip"):
        prepare_movielens(tmp_path / "junk.whl", DataCfg(), tmp_path / "o")
    import zipfile
    with zipfile.ZipFile(tmp_path / "empty.whl", "w") as z:
        z.writestr("recbole/__init__.py", "")
    with pytest.raises(DataError, match=r"no member recbole/dataset_example/ml-100k/ml-100k\.inter"):
        prepare_movielens(tmp_path / "empty.whl", DataCfg(), tmp_path / "o")
    bad = INTER + "7\t1\n" + "8\tx\t4\t1\n"
    wheel = fake_recbole_wheel(tmp_path / "bad.whl", bad, ITEM)
    with pytest.raises(DataError, match=r"ml-100k\.inter:8: wrong number of fields"):
        prepare_movielens(wheel, DataCfg(), tmp_path / "o")
    s = prepare_movielens(wheel, dataclasses.replace(DataCfg(), max_bad_fraction=0.5), tmp_path / "o")
    assert s["n_bad_rows"]["interactions"] == {"wrong number of fields": 1}
    assert s["n_interactions_unknown_item"] == 1  # item "x" is not in the item file
    assert not (tmp_path / "none").exists()


def test_real_movielens_100k(tmp_path):
    """The real data, fetched the way the pipeline fetches it (pip download from PyPI, sha256 against
    data.recbole_sha256), into a cache kept between test runs (R2EC_TEST_CACHE, default ~/.cache/r2ec-tests)."""
    cache = Path(os.environ.get("R2EC_TEST_CACHE", Path.home() / ".cache" / "r2ec-tests")) / "recbole"
    wheel = download_recbole_wheel(DataCfg(), cache)
    stats = prepare_movielens(wheel, DataCfg(), tmp_path / "movielens-100k")
    assert (stats["users"], stats["items"], stats["interactions"]) == (943, 1682, 100000)
    assert stats["samples"] == {"train": 79245, "valid": 9906, "test": 9906}
    ds = load_dataset(tmp_path / "movielens-100k")
    assert ds.items["source_id"].to_list() == [str(i) for i in range(1, 1683)]
    assert ds.items.filter(pl.col("source_id") == "1412")["year"].to_list() == [None]
    assert ds.split("train")["history_item_ids"].list.len().max() == 20
