"""MovieLens-100K as shipped inside the ``recbole`` wheel (RecBole atomic files, tab-separated, typed header).

``ml-100k.inter``: ``user_id:token item_id:token rating:float timestamp:float`` (timestamps in **seconds**).
``ml-100k.item``: ``item_id:token movie_title:token_seq release_year:token class:token_seq`` (genres separated
by spaces). Read with quoting off (titles contain quotes and commas). Known quirks: item 267 has the title and
year "unkonwn" (title becomes "unknown", year null), item 1412 has the year "V" (null).
"""

from __future__ import annotations

import zipfile
import zlib
from pathlib import Path

import polars as pl

from r2ec.data.errors import BadRows, DataError
from r2ec.data.readers import check_fields, decode_lines, parse_header, split_table

INTER_MEMBER = "recbole/dataset_example/ml-100k/ml-100k.inter"
ITEM_MEMBER = "recbole/dataset_example/ml-100k/ml-100k.item"


def read_member(wheel: str | Path, member: str) -> bytes:
    """Bytes of one file inside the wheel (zip); a missing/corrupt wheel or member is a :class:`DataError`."""
    wheel = Path(wheel)
    if not wheel.exists():
        raise DataError(f"{wheel}: wheel not found (run the download stage)")
    try:
        with zipfile.ZipFile(wheel) as z:
            try:
                return z.read(member)
            except KeyError:
                raise DataError(f"{wheel}: no member {member} (is this the recbole wheel?)") from None
    except (zipfile.BadZipFile, zlib.error, OSError, EOFError) as e:
        raise DataError(f"{wheel}: not a readable zip/wheel ({e}); delete it and download it again") from None


def _polars_errors_name_the_file(fn):
    import functools

    @functools.wraps(fn)
    def wrapper(data: bytes, file: str, max_bad_fraction: float):
        try:
            return fn(data, file, max_bad_fraction)
        except pl.exceptions.PolarsError as e:  # not expected: every row problem is counted
            raise DataError(f"{file}: cannot parse ({type(e).__name__}: {e})") from None
    return wrapper


@_polars_errors_name_the_file
def read_interactions(data: bytes, file: str, max_bad_fraction: float) -> tuple[pl.DataFrame, dict]:
    """Parse ``.inter`` bytes → (user_id Utf8, source_id Utf8, rating Float64, timestamp Int64, line Int64)."""
    bad = BadRows(file, max_bad_fraction)
    lines = decode_lines(data, file, bad)
    cols = parse_header(lines[0] if lines.len() else None, "\t", file,
                        ("user_id", "item_id", "rating", "timestamp"), typed=True)
    df = split_table(lines, "\t", cols, file, bad)
    n_rows = max(lines.len() - 1, 0)
    df = check_fields(df, bad, {"user_id": "str", "item_id": "str", "rating": "float", "timestamp": "int"})
    counts = bad.finish(n_rows)
    return df.rename({"item_id": "source_id"}), counts


@_polars_errors_name_the_file
def read_items(data: bytes, file: str, max_bad_fraction: float) -> tuple[pl.DataFrame, dict]:
    """Parse ``.item`` bytes → (source_id, title, year Int64 nullable, genres Utf8 ', '-joined)."""
    bad = BadRows(file, max_bad_fraction)
    lines = decode_lines(data, file, bad)
    cols = parse_header(lines[0] if lines.len() else None, "\t", file,
                        ("item_id", "movie_title", "release_year", "class"), typed=True)
    df = split_table(lines, "\t", cols, file, bad)
    n_rows = max(lines.len() - 1, 0)
    df = check_fields(df, bad, {"item_id": "str", "movie_title": "str"})
    counts = bad.finish(n_rows)
    title = pl.col("movie_title").str.replace_all(r"\s+", " ")
    df = df.select(
        pl.col("line"),
        pl.col("item_id").alias("source_id"),
        pl.when(title == "unkonwn").then(pl.lit("unknown")).otherwise(title).alias("title"),
        pl.col("release_year").cast(pl.Int64, strict=False).alias("year"),
        pl.col("class").str.split(" ").list.eval(pl.element().filter(pl.element() != ""))
        .list.join(", ").alias("genres"),
    ).with_columns(pl.when(pl.col("genres") == "").then(None).otherwise(pl.col("genres")).alias("genres"))
    return df, counts
