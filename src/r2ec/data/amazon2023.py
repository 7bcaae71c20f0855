"""Amazon Reviews 2023 readers: interactions (5-core rating-only CSV or raw review JSONL) and item metadata.

Item filter (reference, DESIGN.md §2) applied to each metadata row, reasons counted:
``title_missing`` (absent, null or not a string), ``title_span`` (contains ``<span id``), ``title_too_long``
(more than ``max_title_words`` whitespace-separated words), ``title_too_short`` (≤ 1 character after
cleaning), ``price_not_float`` (only when ``require_price``: ``float(price)`` fails, as in the reference).

Text cleaning of every kept string: HTML-unescape, strip tags, newlines/tabs → space, collapse spaces, strip.
Description paragraphs are cleaned, de-duplicated in first-seen order (not ``set()``), joined by a space and
truncated to ``max_description_words`` words.
"""

from __future__ import annotations

import html
import math
import re
from collections import Counter
from pathlib import Path
from typing import Any

import polars as pl

from r2ec.data.errors import BadRows, DataError
from r2ec.data.readers import (check_fields, decode_lines, iter_json_objects, parse_header, read_bytes,
                               split_table)

CSV_COLUMNS = ("user_id", "parent_asin", "rating", "timestamp")

_TAG = re.compile(r"<[^>]+>")


def clean_text(raw: str) -> str:
    """HTML-unescape, strip tags, whitespace (newlines, tabs) to single spaces, strip."""
    text = html.unescape(raw) if "&" in raw else raw
    if "<" in text:
        text = _TAG.sub("", text)
    return " ".join(text.split())


def truncate_words(text: str, n: int) -> str:
    words = text.split()
    return text if len(words) <= n else " ".join(words[:n])


def _paragraphs(value: Any, max_words: int | None = None) -> list[str] | None:
    """A list of strings (or one string) → cleaned, non-empty, de-duplicated in first-seen order (None: not a
    list). With ``max_words``, stops once the kept paragraphs hold that many words."""
    if value is None:
        return []
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list):
        return None
    out: dict[str, None] = {}
    words = 0
    for v in value:
        if isinstance(v, str):
            c = clean_text(v)
            if c and c not in out:
                out[c] = None
                words += c.count(" ") + 1
                if max_words is not None and words >= max_words:
                    break
    return list(out)


def detect_format(path: str | Path) -> str:
    name = Path(path).name
    if name.endswith((".csv.gz", ".csv")):
        return "rating_only"
    if name.endswith((".jsonl.gz", ".jsonl", ".json.gz")):
        return "raw_reviews"
    raise DataError(f"{path}: cannot tell the interactions format from the file name (expected .csv.gz for "
                    f"rating_only or .jsonl.gz for raw_reviews)")


# ----------------------------------------------------------------------------------------------------------
# interactions

def read_interactions(path: str | Path, fmt: str, max_bad_fraction: float) -> tuple[pl.DataFrame, dict]:
    """Interactions → (line, user_id Utf8, source_id Utf8, rating Float64, timestamp Int64 ms) in file order,
    plus bad-row counts by reason."""
    path = Path(path)
    readers = {"rating_only": _read_csv, "raw_reviews": _read_reviews_jsonl}
    if fmt in readers:
        try:
            return readers[fmt](path, max_bad_fraction)
        except pl.exceptions.PolarsError as e:  # not expected: every row problem is counted above
            raise DataError(f"{path}: cannot parse as {fmt} ({type(e).__name__}: {e})") from None
    raise DataError(f"{path}: unknown interactions format {fmt!r} (rating_only or raw_reviews)")


def _read_csv(path: Path, max_bad_fraction: float) -> tuple[pl.DataFrame, dict]:
    bad = BadRows(path, max_bad_fraction)
    lines = decode_lines(read_bytes(path), path, bad)
    cols = parse_header(lines[0] if lines.len() else None, ",", path, CSV_COLUMNS)
    df = split_table(lines, ",", cols, path, bad, strip_quotes=True)
    df = check_fields(df, bad, {"user_id": "str", "parent_asin": "str", "rating": "float", "timestamp": "int"})
    counts = bad.finish(max(lines.len() - 1, 0))
    return df.rename({"parent_asin": "source_id"}), counts


def _read_reviews_jsonl(path: Path, max_bad_fraction: float) -> tuple[pl.DataFrame, dict]:
    bad = BadRows(path, max_bad_fraction)
    cols: dict[str, list] = {"line": [], "user_id": [], "source_id": [], "rating": [], "timestamp": []}
    for n, obj in iter_json_objects(path, bad):
        user, asin, rating, ts = obj.get("user_id"), obj.get("parent_asin"), obj.get("rating"), obj.get("timestamp")
        if not isinstance(user, str) or not user:
            bad.add(n, "field user_id: missing or not a string", f"({user!r})")
        elif not isinstance(asin, str) or not asin:
            bad.add(n, "field parent_asin: missing or not a string", f"({asin!r})")
        elif isinstance(rating, bool) or not isinstance(rating, (int, float)) or not math.isfinite(rating):
            bad.add(n, "field rating: missing or not a number", f"({rating!r})")
        elif isinstance(ts, bool) or not isinstance(ts, (int, float)) or not math.isfinite(ts) or ts != int(ts):
            bad.add(n, "field timestamp: missing or not an integer", f"({ts!r})")
        else:
            cols["line"].append(n)
            cols["user_id"].append(user)
            cols["source_id"].append(asin)
            cols["rating"].append(float(rating))
            cols["timestamp"].append(int(ts))
    counts = bad.finish(bad.rows_seen)
    df = pl.DataFrame(cols, schema={"line": pl.Int64, "user_id": pl.Utf8, "source_id": pl.Utf8,
                                    "rating": pl.Float64, "timestamp": pl.Int64})
    return df, counts


# ----------------------------------------------------------------------------------------------------------
# metadata

def item_filter_reason(obj: dict, max_title_words: int, require_price: bool) -> str | None:
    """Why the reference drops this item (None: keep)."""
    title = obj.get("title")
    if not isinstance(title, str):
        return "title_missing"
    if "<span id" in title:
        return "title_span"
    if len(title.split()) > max_title_words:
        return "title_too_long"
    if len(clean_text(title)) <= 1:
        return "title_too_short"
    if require_price:
        try:
            float(obj.get("price"))  # type: ignore[arg-type]
        except (TypeError, ValueError):
            return "price_not_float"
    return None


def _opt_float(v: Any) -> float | None:
    if isinstance(v, bool):
        return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _opt_int(v: Any) -> int | None:
    f = _opt_float(v)
    return int(f) if f is not None and f == int(f) else None


META_SCHEMA = {"line": pl.Int64, "source_id": pl.Utf8, "title": pl.Utf8, "description": pl.Utf8,
               "features": pl.Utf8, "categories": pl.Utf8, "main_category": pl.Utf8, "store": pl.Utf8,
               "average_rating": pl.Float64, "rating_number": pl.Int64, "price": pl.Float64}


def read_meta(path: str | Path, max_title_words: int, require_price: bool, max_description_words: int,
              max_bad_fraction: float, wanted: set[str] | None = None) -> tuple[pl.DataFrame, dict]:
    """Items passing the filter → :data:`META_SCHEMA` rows (texts cleaned), plus a report:
    ``{"n_bad_rows": {...}, "filtered": {reason: n}, "kept": n, "duplicates": n, "coerced_to_null": {...}}``.

    ``wanted`` (optional): source ids worth keeping; others are still checked and counted but not cleaned.
    """
    path = Path(path)
    bad = BadRows(path, max_bad_fraction)
    filtered: Counter[str] = Counter()
    coerced: Counter[str] = Counter()
    seen: set[str] = set()
    dups = 0
    rows: dict[str, list] = {k: [] for k in META_SCHEMA}
    for n, obj in iter_json_objects(path, bad):
        asin = obj.get("parent_asin")
        if not isinstance(asin, str) or not asin:
            bad.add(n, "field parent_asin: missing or not a string", f"({asin!r})")
            continue
        if asin in seen:
            dups += 1
            continue
        seen.add(asin)
        reason = item_filter_reason(obj, max_title_words, require_price)
        if reason:
            filtered[reason] += 1
            continue
        if wanted is not None and asin not in wanted:
            continue
        desc = _paragraphs(obj.get("description"), max_description_words)
        feats = _paragraphs(obj.get("features"), max_description_words)
        cats = _paragraphs(obj.get("categories"))
        for name, val in (("description", desc), ("features", feats), ("categories", cats)):
            if val is None:
                coerced[name] += 1
        text = {k: obj.get(k) for k in ("main_category", "store")}
        for k, v in text.items():
            if v is not None and not isinstance(v, str):
                coerced[k] += 1
        avg, num = obj.get("average_rating"), obj.get("rating_number")
        if avg is not None and _opt_float(avg) is None:
            coerced["average_rating"] += 1
        if num is not None and _opt_int(num) is None:
            coerced["rating_number"] += 1
        rows["line"].append(n)
        rows["source_id"].append(asin)
        rows["title"].append(clean_text(obj["title"]))
        rows["description"].append(truncate_words(" ".join(desc), max_description_words) if desc else None)
        rows["features"].append(truncate_words(" ".join(feats), max_description_words) if feats else None)
        rows["categories"].append(" > ".join(cats) if cats else None)
        for k, v in text.items():
            rows[k].append((clean_text(v) or None) if isinstance(v, str) else None)
        rows["average_rating"].append(_opt_float(avg))
        rows["rating_number"].append(_opt_int(num))
        rows["price"].append(_opt_float(obj.get("price")))
    counts = bad.finish(bad.rows_seen)
    df = pl.DataFrame(rows, schema=META_SCHEMA)
    report = {"n_bad_rows": counts, "filtered": dict(sorted(filtered.items())),
              "passed": len(seen) - sum(filtered.values()), "duplicates": dups,
              "coerced_to_null": dict(sorted(coerced.items()))}
    return df, report
