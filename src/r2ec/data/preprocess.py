"""The preprocessing protocol of DESIGN.md §2 and the prepared-dataset contract of §3.

Shared steps (both datasets):

1. drop duplicate events (same user, item, timestamp; first kept, counted);
2. per-user chronological sort — stable: ties keep input order (Amazon); MovieLens ties on (user, timestamp)
   are broken by item id, then file order;
3. every position i >= 1 of a user's sequence is one sample: the up-to ``history_len`` previous interactions
   and the target interaction i;
4. samples are ordered globally by target timestamp, stable over (user by first appearance in the input,
   position) — the reference's order; ``sample_id`` is the position in that order;
5. split the first ``int(n*f0)`` / next up to ``int(n*(f0+f1))`` / rest into train / valid / test.

Item ids are dense 1..N over the items that occur in the final interactions, in ascending ``source_id`` order
(numeric order when every source id is an integer, as for MovieLens, so there item_id == movie id). No pad row.

Amazon only: item filter and text cleaning (:mod:`r2ec.data.amazon2023`), temporal window widened backwards
until it holds ``min_items`` items, optional k-core.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from pathlib import Path
from typing import Any

import polars as pl

from r2ec import io
from r2ec.config import DataCfg
from r2ec.data.errors import DataError

log = logging.getLogger("r2ec.data")


# ----------------------------------------------------------------------------------------------------------
# the paper's dataset statistics (reference facts: R2ec, NeurIPS 2025, Tables 3 and 5)

# users / items / interactions and the train / valid / test sample counts the paper reports per Amazon 2023
# category; None = not reported there. ``prepare`` prints its own counts beside these and warns where they differ
# (the source files change over time, so a difference is a fact to report, not an error).
PAPER_STATS: dict[str, dict[str, Any]] = {
    "Video_Games": {"users": 29_230, "items": 10_144, "interactions": 63_502,
                    "samples": {"train": 50_801, "valid": 6_350, "test": 6_351}},
    "CDs_and_Vinyl": {"users": None, "items": None, "interactions": None,
                      "samples": {"train": 10_748, "valid": 1_343, "test": 1_344}},
    "Musical_Instruments": {"users": None, "items": None, "interactions": None,
                            "samples": {"train": 27_498, "valid": 3_437, "test": 3_438}},
}


def paper_comparison(dataset: str, stats: dict) -> list[tuple[str, int | None, int | None]]:
    """``(count, ours, paper's)`` rows for a category of :data:`PAPER_STATS` (empty for other datasets)."""
    ref = PAPER_STATS.get(dataset)
    if ref is None:
        return []
    rows: list[tuple[str, int | None, int | None]] = [(k, stats.get(k), ref[k])
                                                      for k in ("users", "items", "interactions")]
    rows += [(f"{k} samples", stats.get("samples", {}).get(k), v) for k, v in ref["samples"].items()]
    return rows


def report_paper_comparison(dataset: str, stats: dict) -> str:
    """A small table of this preparation's counts beside the paper's (``""`` for datasets the paper does not
    report); logs one warning per count that differs from a reported one."""
    rows = paper_comparison(dataset, stats)
    if not rows:
        return ""
    fmt = lambda v: "-" if v is None else f"{v:,}"  # noqa: E731
    lines = [f"{dataset}: prepared vs the paper (Tables 3/5)", f"  {'count':<16}{'prepared':>12}{'paper':>12}"]
    for name, ours, ref in rows:
        lines.append(f"  {name:<16}{fmt(ours):>12}{fmt(ref):>12}")
        if ref is not None and ours != ref:
            log.warning("%s: %s = %s, the paper reports %s (the source files change over time)", dataset, name,
                        fmt(ours), fmt(ref))
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------------
# shared steps

def drop_duplicate_events(inter: pl.DataFrame) -> tuple[pl.DataFrame, int]:
    """Drop repeated (user_id, item, timestamp) events, keeping the first in input order."""
    item = "item_id" if "item_id" in inter.columns else "source_id"
    out = inter.unique(subset=["user_id", item, "timestamp"], keep="first", maintain_order=True)
    return out, inter.height - out.height


def assign_item_ids(sources: pl.Series) -> pl.DataFrame:
    """Dense ids 1..N over the distinct source ids, ascending (numerically when all are integers)."""
    uniq = sources.unique()
    as_int = uniq.cast(pl.Int64, strict=False)
    if as_int.null_count() == 0 and uniq.len() > 0:
        order = pl.DataFrame({"source_id": uniq, "k": as_int}).sort("k").drop("k")
    else:
        order = pl.DataFrame({"source_id": uniq}).sort("source_id")
    return order.with_row_index("item_id", offset=1).with_columns(pl.col("item_id").cast(pl.Int64))


def kcore(inter: pl.DataFrame, k: int) -> pl.DataFrame:
    """Iteratively drop users and items with fewer than ``k`` interactions (k <= 1: no-op)."""
    if k <= 1:
        return inter
    while True:
        n = inter.height
        inter = inter.filter((pl.len().over("user_id") >= k) & (pl.len().over("source_id") >= k))
        if inter.height == n:
            return inter


def build_samples(inter: pl.DataFrame, history_len: int, tie_cols: tuple[str, ...] = ()) -> pl.DataFrame:
    """All next-item samples in global time order (columns of :data:`r2ec.io.SAMPLE_SCHEMA`).

    ``inter`` holds user_id (Utf8), item_id (Int64), rating (Float64), timestamp (Int64) and ``row`` (input
    order). Per user: sort by (timestamp, *tie_cols, row); every position >= 1 is a sample whose history is the
    previous ``history_len`` interactions. Globally: sort by (target timestamp, user first appearance, position).
    """
    users = inter.select("user_id").unique(maintain_order=True).with_row_index("user_rank")
    df = (inter.join(users, on="user_id", how="left")
          .sort(["user_rank", "timestamp", *tie_cols, "row"])
          .with_row_index("i")
          .with_columns(pl.col("i").cast(pl.Int64)))
    first = (pl.col("user_rank") != pl.col("user_rank").shift(1)).fill_null(True)
    df = df.with_columns((pl.col("i") - pl.when(first).then(pl.col("i")).forward_fill()).alias("pos"))
    # rows of a user are contiguous: sample i's history is rows max(i - L, i - pos) .. i - 1
    targets = df.filter(pl.col("pos") >= 1)
    src = targets.select(pl.col("i"), pl.int_ranges(pl.max_horizontal(pl.col("i") - history_len,
                                                                     pl.col("i") - pl.col("pos")),
                                                    pl.col("i")).alias("src")).explode("src")
    idx = src["src"]
    hist = (src.with_columns(df["item_id"].gather(idx).alias("history_item_ids"),
                             df["rating"].gather(idx).alias("history_ratings"),
                             df["timestamp"].gather(idx).alias("history_timestamps"))
            .group_by("i", maintain_order=True)
            .agg("history_item_ids", "history_ratings", "history_timestamps"))
    samples = (targets.join(hist, on="i", how="left")
               .sort(["timestamp", "user_rank", "pos"])
               .with_row_index("sample_id"))
    return samples.select(
        pl.col("sample_id").cast(pl.Int64),
        pl.col("user_id").cast(pl.Utf8),
        pl.col("history_item_ids").cast(pl.List(pl.Int64)),
        pl.col("history_ratings").cast(pl.List(pl.Float64)),
        pl.col("history_timestamps").cast(pl.List(pl.Int64)),
        pl.col("item_id").cast(pl.Int64).alias("target_item_id"),
        pl.col("rating").cast(pl.Float64).alias("target_rating"),
        pl.col("timestamp").cast(pl.Int64).alias("target_timestamp"),
    )


def split_bounds(n: int, fractions: tuple[float, float, float]) -> tuple[int, int]:
    """Reference split points ``int(n*f0)``, ``int(n*(f0+f1))`` (f0+f1 rounded to 12 decimals so that
    0.8+0.1 is 0.9 as in the reference code, not 0.9000000000000001)."""
    f0, f1, _ = fractions
    return int(n * f0), int(n * round(f0 + f1, 12))


def split_samples(samples: pl.DataFrame, fractions: tuple[float, float, float]) -> dict[str, pl.DataFrame]:
    a, b = split_bounds(samples.height, fractions)
    return {"train": samples.slice(0, a), "valid": samples.slice(a, b - a), "test": samples.slice(b)}


def write_dataset(out: Path, items: pl.DataFrame, splits: dict[str, pl.DataFrame], stats: dict) -> None:
    """Write the contract atomically (the whole directory appears at once) and check it with load_dataset."""
    for col, dtype in io.ITEM_REQUIRED.items():
        assert items.schema[col] == dtype, (col, items.schema[col])
    with io.atomic_dir(out) as tmp:
        tmp.chmod(0o755)  # mkdtemp makes it 0700
        items.write_parquet(tmp / "items.parquet")
        for name, df in splits.items():
            assert dict(df.schema) == io.SAMPLE_SCHEMA, (name, df.schema)
            df.write_parquet(tmp / f"{name}.parquet")
        (tmp / "stats.json").write_text(__import__("json").dumps(stats, indent=2) + "\n", encoding="utf-8")
        io.load_dataset(tmp)


def basic_stats(inter: pl.DataFrame, items: pl.DataFrame, splits: dict[str, pl.DataFrame]) -> dict[str, Any]:
    users = inter["user_id"].n_unique()
    n_items = items.height
    return {
        "users": users,
        "items": n_items,
        "interactions": inter.height,
        "density": inter.height / (users * n_items) if users and n_items else 0.0,
        "samples": {k: v.height for k, v in splits.items()},
        "history_len_max": int(max((v["history_item_ids"].list.len().max() or 0) for v in splits.values())),
    }


def train_item_stats(items: pl.DataFrame, train: pl.DataFrame) -> pl.DataFrame:
    """``items`` with ``average_rating`` / ``rating_number`` computed from the TRAIN split's targets only.

    ``rating_number`` = number of train samples whose target is the item (0 when none), ``average_rating`` =
    mean of their ``target_rating`` (null when none). Valid/test targets never enter, so the item prompt's
    "User Rating" / "Number of Ratings" (the fields of the paper's Amazon item prompt) leak nothing.
    """
    st = train.group_by("target_item_id").agg(pl.col("target_rating").mean().alias("_avg"),
                                              pl.len().cast(pl.Int64).alias("_n"))
    return (items.join(st, left_on="item_id", right_on="target_item_id", how="left")
            .with_columns(pl.col("_avg").cast(pl.Float64).alias("average_rating"),
                          pl.col("_n").fill_null(0).cast(pl.Int64).alias("rating_number"))
            .drop("_avg", "_n").sort("item_id"))


def _finish(inter: pl.DataFrame, items: pl.DataFrame, cfg: DataCfg, out: Path, tie_cols: tuple[str, ...],
            extra: dict, t0: float, *, stats_from_train: bool = False) -> dict:
    samples = build_samples(inter, cfg.history_len, tie_cols)
    if samples.height == 0:
        raise DataError(f"{out}: no samples: none of the {inter['user_id'].n_unique()} users has two or more "
                        f"interactions after filtering")
    splits = split_samples(samples, cfg.split)
    if stats_from_train:
        items = train_item_stats(items, splits["train"])
    stats = {"dataset": out.name, **basic_stats(inter, items, splits), **extra,
             "split_fractions": list(cfg.split), "history_len": cfg.history_len,
             "item_order": "item_id 1..N in ascending source_id order (numeric when all ids are integers)"}
    write_dataset(out, items, splits, stats)  # stats.json holds no timings: identical inputs, identical bytes
    log.info("%s: %d users, %d items, %d interactions, samples %s (%.1f s)", out, stats["users"], stats["items"],
             stats["interactions"], stats["samples"], time.perf_counter() - t0)
    return stats


# ----------------------------------------------------------------------------------------------------------
# MovieLens-100K

def prepare_movielens(wheel: Path, cfg: DataCfg, out: Path) -> dict:
    """Prepare MovieLens-100K from the recbole wheel into ``out`` (atomic); return the stats."""
    from r2ec.data import movielens as ml
    t0 = time.perf_counter()
    wheel, out = Path(wheel), Path(out)
    inter_file, item_file = f"{wheel}!{ml.INTER_MEMBER}", f"{wheel}!{ml.ITEM_MEMBER}"
    inter, bad_inter = ml.read_interactions(ml.read_member(wheel, ml.INTER_MEMBER), inter_file,
                                            cfg.max_bad_fraction)
    meta, bad_items = ml.read_items(ml.read_member(wheel, ml.ITEM_MEMBER), item_file, cfg.max_bad_fraction)
    n_meta = meta.height
    meta = meta.unique(subset=["source_id"], keep="first", maintain_order=True)
    dup_items = n_meta - meta.height
    inter = inter.with_row_index("row").with_columns(pl.col("row").cast(pl.Int64))
    inter, dups = drop_duplicate_events(inter)
    known = inter["source_id"].is_in(meta["source_id"].implode())
    unknown = inter.filter(~known)
    if unknown.height:
        log.warning("%s: %d interactions name items missing from %s (first at line %d); dropped", inter_file,
                    unknown.height, item_file, unknown["line"][0])
    inter = inter.filter(known)
    if inter.height == 0:
        raise DataError(f"{inter_file}: no usable interactions")
    ids = assign_item_ids(inter["source_id"])
    inter = inter.join(ids, on="source_id", how="left")
    items = (ids.join(meta, on="source_id", how="left").sort("item_id")
             .select(pl.col("item_id"), pl.col("source_id"), pl.col("title"),
                     pl.lit(None, dtype=pl.Utf8).alias("description"),
                     pl.col("genres").alias("categories"), pl.col("genres"), pl.col("year"),
                     pl.lit(None, dtype=pl.Float64).alias("average_rating"),
                     pl.lit(None, dtype=pl.Int64).alias("rating_number")))
    extra = {
        "source": {"wheel": wheel.name, "members": [ml.INTER_MEMBER, ml.ITEM_MEMBER]},
        "timestamp_unit": "s",
        "window": None,
        "tie_break": "per user: timestamp, then item_id, then file order",
        "n_bad_rows": {"interactions": bad_inter, "items": bad_items},
        "n_duplicate_events": dups,
        "n_duplicate_items": dup_items,
        "n_interactions_unknown_item": unknown.height,
        "item_stats": "average_rating / rating_number from train-split targets" if cfg.movielens_item_stats
        else None,
    }
    return _finish(inter.select("user_id", "item_id", "rating", "timestamp", "row"), items, cfg, out,
                   ("item_id",), extra, t0, stats_from_train=cfg.movielens_item_stats)


# ----------------------------------------------------------------------------------------------------------
# Amazon Reviews 2023

def _day_ms(d: dt.date) -> int:
    """Milliseconds since the epoch at midnight UTC of ``d``."""
    return int(dt.datetime(d.year, d.month, d.day, tzinfo=dt.timezone.utc).timestamp()) * 1000


def months_before(d: dt.date, months: int) -> dt.date:
    """``d`` moved back by whole months, the day clamped to the month's length (as pandas' DateOffset)."""
    import calendar
    y, m = divmod(d.year * 12 + (d.month - 1) - months, 12)
    return dt.date(y, m + 1, min(d.day, calendar.monthrange(y, m + 1)[1]))


def select_window(inter: pl.DataFrame, cfg: DataCfg) -> tuple[pl.DataFrame, dict]:
    """Keep ``start <= timestamp <= end`` (ms; end = midnight UTC of ``window_end``, inclusive), then the
    optional k-core; while fewer than ``min_items`` distinct items remain and the start's year is later than the
    earliest interaction's year, move the start back ``window_step_months`` and retry (reference ``gao``)."""
    start = dt.date.fromisoformat(cfg.window_start)
    end = dt.date.fromisoformat(cfg.window_end)
    if end < start:
        raise DataError(f"data.window_end {end} is before data.window_start {start}")
    end_ms = _day_ms(end)
    min_year = dt.datetime.fromtimestamp(int(inter["timestamp"].min()) / 1000, dt.timezone.utc).year
    steps = 0
    while True:
        cur = kcore(inter.filter(pl.col("timestamp").is_between(_day_ms(start), end_ms)), cfg.kcore)
        n_items = cur["source_id"].n_unique()
        log.info("window %s..%s: %d users, %d items, %d interactions", start, end, cur["user_id"].n_unique(),
                 n_items, cur.height)
        if n_items >= cfg.min_items or start.year <= min_year:
            break
        start = months_before(start, cfg.window_step_months)
        steps += 1
    info = {"start": start.isoformat(), "end": end.isoformat(), "initial_start": cfg.window_start,
            "widening_steps": steps, "step_months": cfg.window_step_months, "min_items": cfg.min_items,
            "reached_min_items": n_items >= cfg.min_items, "earliest_year": min_year, "kcore": cfg.kcore,
            "rule": "start <= timestamp_ms <= end, both at midnight UTC"}
    return cur, info


def prepare_amazon(interactions: Path, meta: Path, cfg: DataCfg, out: Path,
                   input_format: str | None = None) -> dict:
    """Prepare one Amazon Reviews 2023 category into ``out`` (atomic); return the stats.

    ``input_format``: 'rating_only' or 'raw_reviews'; by default told from the file name (.csv.gz /
    .jsonl.gz), else ``cfg.amazon_input``.
    """
    from r2ec.data import amazon2023 as az
    t0 = time.perf_counter()
    interactions, meta, out = Path(interactions), Path(meta), Path(out)
    if input_format is None:
        try:
            input_format = az.detect_format(interactions)
        except DataError:
            input_format = cfg.amazon_input
    inter, bad_inter = az.read_interactions(interactions, input_format, cfg.max_bad_fraction)
    n_read = inter.height
    if n_read == 0:
        raise DataError(f"{interactions}: no usable interactions")
    median_ts = inter["timestamp"].median()
    if median_ts is not None and median_ts < 1e11:
        raise DataError(f"{interactions}: field timestamp looks like seconds (median {int(median_ts)}); Amazon "
                        f"2023 timestamps are milliseconds")
    wanted = set(inter["source_id"].unique().to_list())
    items_meta, meta_report = az.read_meta(meta, cfg.max_title_words, cfg.require_price,
                                           cfg.max_description_words, cfg.max_bad_fraction, wanted)
    inter = inter.with_row_index("row").with_columns(pl.col("row").cast(pl.Int64))
    inter, dups = drop_duplicate_events(inter)
    kept = inter["source_id"].is_in(items_meta["source_id"].implode())
    n_no_item = int((~kept).sum())
    inter = inter.filter(kept)
    if inter.height == 0:
        raise DataError(f"{interactions}: no interaction is left after the item filter ({n_read} read, "
                        f"{meta_report['passed']} items of {meta} pass the filter "
                        f"{meta_report['filtered']}, none of them is rated)")
    inter, window = select_window(inter, cfg)
    if inter.height == 0:
        raise DataError(f"{interactions}: no interaction inside the window {window['start']}..{window['end']} "
                        f"(k-core {cfg.kcore})")
    ids = assign_item_ids(inter["source_id"])
    inter = inter.join(ids, on="source_id", how="left")
    items = (ids.join(items_meta.drop("line"), on="source_id", how="left").sort("item_id")
             .select("item_id", "source_id", "title", "description", "categories", "average_rating",
                     "rating_number", "features", "main_category", "store", "price"))
    extra = {
        "source": {"interactions": interactions.name, "meta": meta.name, "input_format": input_format},
        "timestamp_unit": "ms",
        "window": window,
        "tie_break": "per user: timestamp, then input order",
        "n_bad_rows": {"interactions": bad_inter, "meta": meta_report["n_bad_rows"]},
        "n_duplicate_events": dups,
        "n_interactions_read": n_read,
        "n_interactions_item_filtered": n_no_item,
        "item_filter": {"filtered": meta_report["filtered"], "passed": meta_report["passed"],
                        "duplicate_meta_rows": meta_report["duplicates"],
                        "fields_coerced_to_null": meta_report["coerced_to_null"]},
    }
    return _finish(inter.select("user_id", "item_id", "rating", "timestamp", "row"), items, cfg, out, (),
                   extra, t0)
