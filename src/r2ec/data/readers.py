"""Robust low-level readers: gzip streams, text decoding, delimited tables and JSON lines.

Every reader reports problems as :class:`~r2ec.data.errors.DataError` (the file is unusable: not gzip,
truncated, wrong header) or as counted skips in a :class:`~r2ec.data.errors.BadRows` (a single row is
unusable). Line numbers are 1-based and count the header line, so they match ``zcat FILE | sed -n Np``.
"""

from __future__ import annotations

import gzip
import json
import zlib
from pathlib import Path
from typing import Iterator

import polars as pl

from r2ec.data.errors import BadRows, DataError

_CHUNK = 1 << 20


def _is_gzip(path: Path) -> bool:
    return path.name.endswith(".gz")


def read_bytes(path: str | Path) -> bytes:
    """Whole (decompressed) content of ``path``; a corrupt or truncated gzip stream is a :class:`DataError`."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: file not found")
    if not _is_gzip(path):
        return path.read_bytes()
    parts: list[bytes] = []
    lines = 0
    try:
        with gzip.open(path, "rb") as f:
            while chunk := f.read(_CHUNK):
                parts.append(chunk)
                lines += chunk.count(b"\n")
    except (EOFError, gzip.BadGzipFile, zlib.error, OSError) as e:
        raise DataError(f"{path}: corrupt or truncated gzip stream after line {lines} ({e}); delete the file and "
                        f"download it again") from None
    return b"".join(parts)


def iter_lines(path: str | Path) -> Iterator[tuple[int, bytes]]:
    """Yield ``(line_number, raw_line_without_newline)`` of a (gzipped) text file, streaming."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: file not found")
    opener = gzip.open if _is_gzip(path) else open
    n = 0
    try:
        with opener(path, "rb") as f:
            for n, raw in enumerate(f, 1):
                yield n, raw.rstrip(b"\r\n")
    except (EOFError, gzip.BadGzipFile, zlib.error) as e:
        raise DataError(f"{path}: corrupt or truncated gzip stream after line {n} ({e}); delete the file and "
                        f"download it again") from None


def decode_lines(data: bytes, file: str | Path, bad: BadRows, chunk: int = 1 << 28) -> pl.Series:
    """Split bytes into a Utf8 series of lines (index = line number - 1). Lines with non-UTF-8 bytes are
    counted in ``bad`` and replaced by null. Works in chunks cut at newlines (one polars string < 4 GiB)."""
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    parts: list[pl.Series] = []
    pos, offset = 0, 0
    while pos < len(data) or not parts:
        end = len(data) if pos + chunk >= len(data) else data.rfind(b"\n", pos, pos + chunk) + 1
        if end <= pos:  # one line longer than the chunk
            end = data.find(b"\n", pos + chunk) + 1 or len(data)
        piece = data[pos:end]
        try:
            text, broken = piece.decode("utf-8"), False
        except UnicodeDecodeError:
            text, broken = piece.decode("utf-8", errors="replace"), True
        lines = pl.Series("line", [text], dtype=pl.Utf8).str.split("\n").explode().str.strip_suffix("\r")
        if end == len(data) and lines.len() and lines[-1] == "":
            lines = lines.head(lines.len() - 1)
        elif end < len(data) or piece.endswith(b"\n"):
            lines = lines.head(lines.len() - 1)  # the empty string after the chunk's final newline
        if broken:
            mask = lines.str.contains("\ufffd", literal=True)
            bad.add_rows([offset + i + 1 for i in mask.arg_true().to_list()], "non-UTF-8 bytes")
            lines = pl.select(pl.when(mask).then(None).otherwise(lines).alias("line")).to_series()
        parts.append(lines)
        offset += lines.len()
        pos = end
        if not data:
            break
    return pl.concat(parts) if len(parts) > 1 else parts[0]


def parse_header(line: str | None, sep: str, file: str | Path, required: tuple[str, ...],
                 typed: bool = False) -> dict[str, int]:
    """Map column names to positions; ``typed`` strips RecBole's ``:type`` suffixes (``user_id:token``)."""
    if line is None or not line.strip():
        raise DataError(f"{file}:1: missing or unreadable header line (expected columns {sep.join(required)})")
    names = [c.strip().strip('"') for c in line.split(sep)]
    if typed:
        names = [c.split(":", 1)[0] for c in names]
    missing = [c for c in required if c not in names]
    if missing:
        raise DataError(f"{file}:1: header {line!r} lacks column(s) {', '.join(missing)} "
                        f"(expected {sep.join(required)})")
    return {c: names.index(c) for c in required} | {"__n__": len(names)}


def split_table(lines: pl.Series, sep: str, columns: dict[str, int], file: str | Path, bad: BadRows,
                strip_quotes: bool = False) -> pl.DataFrame:
    """Split data lines (``lines[1:]``; line 1 is the header) into string columns plus ``line`` (1-based).

    Lines with a wrong number of fields are counted in ``bad`` and dropped; blank lines are ignored."""
    n_fields = columns["__n__"]
    df = pl.DataFrame({"raw": lines}).with_row_index("line", offset=1).slice(1)
    df = df.filter(pl.col("raw").is_null() | (pl.col("raw").str.strip_chars() != ""))
    df = df.filter(pl.col("raw").is_not_null())  # non-UTF-8 lines were counted already
    df = df.with_columns(pl.col("raw").str.split(sep).alias("fields"))
    wrong = df.filter(pl.col("fields").list.len() != n_fields)
    if wrong.height:
        bad.add_rows(wrong["line"].to_list(), "wrong number of fields",
                     [f"(expected {n_fields} separated by {sep!r}, got {len(f)})" for f in wrong["fields"].head(5)])
        df = df.filter(pl.col("fields").list.len() == n_fields)
    out = []
    for name, idx in columns.items():
        if name == "__n__":
            continue
        col = pl.col("fields").list.get(idx).str.strip_chars()
        if strip_quotes:
            col = col.str.strip_chars('"')
        out.append(col.alias(name))
    return df.select(pl.col("line"), *out)


def check_fields(df: pl.DataFrame, bad: BadRows, casts: dict[str, str]) -> pl.DataFrame:
    """Cast string columns (``casts``: name -> 'str' | 'float' | 'int'); rows whose field is empty or not of
    that type are counted in ``bad`` (reason names the field) and dropped."""
    exprs = []
    for name, kind in casts.items():
        s = pl.col(name)
        if kind == "str":
            exprs.append(pl.when(s == "").then(None).otherwise(s).alias(name))
        elif kind == "float":
            f = s.cast(pl.Float64, strict=False)
            exprs.append(pl.when(f.is_nan() | f.is_infinite()).then(None).otherwise(f).alias(name))
        elif kind == "int":
            i = s.cast(pl.Int64, strict=False)
            f = s.cast(pl.Float64, strict=False)
            integral = f.is_finite() & (f == f.floor()) & (f.abs() < 2.0 ** 62)
            from_float = pl.when(integral).then(f.cast(pl.Int64, strict=False))
            exprs.append(pl.coalesce(i, from_float).alias(name))
        else:  # pragma: no cover
            raise ValueError(kind)
    typed = df.with_columns(exprs)
    keep = pl.Series("keep", [True] * df.height, dtype=pl.Boolean)
    for name, kind in casts.items():
        is_bad = typed[name].is_null()
        if is_bad.any():
            rows = df.filter(is_bad & keep)  # a row is counted once, under its first bad field
            what = "missing" if kind == "str" else f"not {'an integer' if kind == 'int' else 'a number'}"
            bad.add_rows(rows["line"].to_list(), f"field {name}: {what}",
                         [f"({v!r})" for v in rows[name].head(5)])
            keep = keep & ~is_bad
    return typed.filter(keep)


def iter_json_objects(path: str | Path, bad: BadRows) -> Iterator[tuple[int, dict]]:
    """Yield ``(line_number, object)`` of a (gzipped) JSON-lines file; malformed lines, non-objects and
    non-UTF-8 lines are counted in ``bad``; ``bad.rows_seen`` counts the non-blank lines read so far."""
    for n, raw in iter_lines(path):
        if not raw.strip():
            continue
        bad.rows_seen += 1
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            bad.add(n, "non-UTF-8 bytes", f"(byte {e.start + 1})")
            continue
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as e:
            bad.add(n, "malformed JSON", f"({e.msg} at column {e.colno})")
            continue
        if not isinstance(obj, dict):
            bad.add(n, "not a JSON object", f"(got {type(obj).__name__})")
            continue
        yield n, obj
