"""Atomic file writes and the prepared-dataset / run contracts (DESIGN.md §3).

Every output is written to a temporary sibling and renamed into place, so a killed process never leaves a
half-written file behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import polars as pl

from r2ec.errors import UserError

SPLITS = ("train", "valid", "test")

SAMPLE_SCHEMA = {
    "sample_id": pl.Int64,
    "user_id": pl.Utf8,
    "history_item_ids": pl.List(pl.Int64),
    "history_ratings": pl.List(pl.Float64),
    "history_timestamps": pl.List(pl.Int64),
    "target_item_id": pl.Int64,
    "target_rating": pl.Float64,
    "target_timestamp": pl.Int64,
}
ITEM_REQUIRED = {"item_id": pl.Int64, "source_id": pl.Utf8, "title": pl.Utf8}


class ContractError(UserError):
    """A prepared dataset or run directory does not follow the contract."""


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success rename it onto ``path``, on error remove it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a temporary directory next to ``path``; on success it replaces ``path`` whole."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def slug(text: str) -> str:
    """A file-name-safe form of ``text``: characters outside ``[A-Za-z0-9-_.]`` become ``_``, at most 120."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text)[:120]


def write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: str | Path, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def write_parquet(path: str | Path, df: pl.DataFrame) -> None:
    with atomic_path(path) as tmp:
        df.write_parquet(tmp)


def append_jsonl(path: str | Path, record: dict) -> None:
    """Append one JSON line (logs are append-only; a torn last line is tolerated by :func:`read_jsonl`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")


def read_jsonl(path: str | Path) -> list[dict]:
    out = []
    path = Path(path)
    if not path.exists():
        return out
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a line torn by a kill
    return out


@dataclass(frozen=True)
class Dataset:
    """A prepared dataset: the item table and the three chronological sample splits."""
    name: str
    root: Path
    items: pl.DataFrame
    splits: dict[str, pl.DataFrame]
    stats: dict

    @property
    def n_items(self) -> int:
        return self.items.height

    def split(self, name: str) -> pl.DataFrame:
        return self.splits[name]


def _check_columns(df: pl.DataFrame, required: dict, file: Path) -> None:
    for col, dtype in required.items():
        if col not in df.columns:
            raise ContractError(f"{file}: missing column {col!r}")
        if df.schema[col] != dtype:
            raise ContractError(f"{file}: column {col!r} has type {df.schema[col]}, expected {dtype}")


def load_dataset(root: str | Path) -> Dataset:
    """Read and check a prepared dataset directory (``items.parquet``, ``{train,valid,test}.parquet``, stats)."""
    root = Path(root)
    if not root.is_dir():
        raise ContractError(f"{root}: prepared dataset directory not found (run the prepare stage)")
    items_file = root / "items.parquet"
    if not items_file.exists():
        raise ContractError(f"{items_file}: missing")
    items = pl.read_parquet(items_file)
    _check_columns(items, ITEM_REQUIRED, items_file)
    ids = items["item_id"].to_list()
    if ids != list(range(1, len(ids) + 1)):
        raise ContractError(f"{items_file}: item_id must be dense 1..N in order")
    splits = {}
    for s in SPLITS:
        f = root / f"{s}.parquet"
        if not f.exists():
            raise ContractError(f"{f}: missing")
        df = pl.read_parquet(f)
        _check_columns(df, SAMPLE_SCHEMA, f)
        splits[s] = df
    stats_file = root / "stats.json"
    stats = json.loads(stats_file.read_text()) if stats_file.exists() else {}
    return Dataset(name=root.name, root=root, items=items, splits=splits, stats=stats)


def pad_histories(histories: list[list[int]], max_len: int, left: bool = True) -> "Any":
    """Pad item-id histories with 0 to ``max_len`` (keeping the last ``max_len``); returns an int64 tensor."""
    import torch
    out = torch.zeros((len(histories), max_len), dtype=torch.long)
    for i, h in enumerate(histories):
        h = h[-max_len:]
        if not h:
            continue
        if left:
            out[i, max_len - len(h):] = torch.as_tensor(h, dtype=torch.long)
        else:
            out[i, : len(h)] = torch.as_tensor(h, dtype=torch.long)
    return out


def reset_run_if_params_changed(run_dir: str | Path, fingerprint: dict) -> bool:
    """Keep ``run_dir`` (and its resumable checkpoints) only if it was started with the same ``fingerprint``.

    Returns True when an existing run directory was wiped. The fingerprint is stored as ``.fingerprint.json``.
    """
    run_dir = Path(run_dir)
    f = run_dir / ".fingerprint.json"
    wanted = json.dumps(fingerprint, sort_keys=True, default=str)
    wiped = False
    if run_dir.exists():
        old = f.read_text(encoding="utf-8") if f.exists() else None
        if old != wanted:
            shutil.rmtree(run_dir)
            wiped = True
    run_dir.mkdir(parents=True, exist_ok=True)
    write_text(f, wanted)
    return wiped
