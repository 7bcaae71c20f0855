"""A tiny synthetic prepared dataset and shrunk params for RecPO tests (tiny random Llama backbone)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import polars as pl

from r2ec.config import ContrastiveCfg, EvalCfg, LlmCfg, LoraCfg, Params, RecpoCfg
from r2ec.io import SAMPLE_SCHEMA, Dataset

WORDS = ["red", "blue", "fast", "quiet", "space", "jazz", "retro", "epic", "tiny", "grand"]


def tiny_dataset(n_items: int = 12, n_users: int = 6, hist: int = 3) -> Dataset:
    items = pl.DataFrame({
        "item_id": list(range(1, n_items + 1)),
        "source_id": [f"s{i}" for i in range(1, n_items + 1)],
        "title": [f"{WORDS[i % 10]} {WORDS[(3 * i) % 10]}" for i in range(1, n_items + 1)],
        "description": [f"a {WORDS[(7 * i) % 10]} thing" for i in range(1, n_items + 1)],
        "average_rating": [3.0 + (i % 3) * 0.5 for i in range(1, n_items + 1)],
        "rating_number": [10 * i for i in range(1, n_items + 1)],
    })
    rows = []
    sid = 0
    for u in range(n_users):
        seq = [((u * 5 + j * 3) % n_items) + 1 for j in range(hist + 3)]
        for pos in range(1, len(seq)):
            h = seq[max(0, pos - hist):pos]
            rows.append({"sample_id": sid, "user_id": f"u{u}", "history_item_ids": h,
                         "history_ratings": [4.0] * len(h),
                         "history_timestamps": [1_000_000 + 86400 * k for k in range(len(h))],
                         "target_item_id": seq[pos], "target_rating": 5.0,
                         "target_timestamp": 1_000_000 + 86400 * (len(h) + 2)})
            sid += 1
    df = pl.DataFrame(rows, schema=SAMPLE_SCHEMA)
    n = df.height
    a, b = int(n * 0.6), int(n * 0.8)
    splits = {"train": df[:a], "valid": df[a:b], "test": df[b:]}
    return Dataset(name="tiny", root=Path("."), items=items, splits=splits, stats={})


def write_tiny_dataset(root: Path) -> tuple[Dataset, Path]:
    """:func:`tiny_dataset` written as a prepared dataset directory ``root/data`` (what ``--data`` reads)."""
    ds = tiny_dataset()
    data = Path(root) / "data"
    data.mkdir()
    ds.items.write_parquet(data / "items.parquet")
    for name, df in ds.splits.items():
        df.write_parquet(data / f"{name}.parquet")
    return ds, data


def load_benchmark(name: str):
    """``benchmarks/<name>.py`` as a module (the scripts are not a package)."""
    import importlib.util
    path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def tiny_params(**recpo) -> Params:
    base = dict(group_size=4, batch_size=2, steps=2, max_reasoning_tokens=6, eval_every=2, checkpoint_every=1,
                item_refresh_every=1, lr=1e-2, temperature=1.0, top_k=0, patience=3, item_batch_size=8,
                eval_batch_size=8, gen_batch_size=8)
    base.update(recpo)
    rc = RecpoCfg(**base)
    return Params(llm=LlmCfg(backbone="tiny-random", max_prompt_tokens=128),
                  lora=LoraCfg(r=4, alpha=8, dropout=0.0),
                  eval=EvalCfg(ks=(5, 10), max_samples=0, valid_max_samples=0, batch_size=8),
                  recpo=rc, contrastive=_mirror(rc))


def _mirror(rc: RecpoCfg) -> ContrastiveCfg:
    """The contrastive budget equal to the recpo one (tests give one set of numbers to every variant)."""
    return ContrastiveCfg(**{f.name: getattr(rc, f.name) for f in dataclasses.fields(ContrastiveCfg)
                             if hasattr(rc, f.name)})


def with_recpo(p: Params, **kw) -> Params:
    rc = dataclasses.replace(p.recpo, **kw)
    return dataclasses.replace(p, recpo=rc, contrastive=_mirror(rc))


class Killed(Exception):
    """Raised by a :func:`kill_at` hook: the run was interrupted (kill-and-resume tests)."""


def kill_at(step: int):
    """A harness ``hook(step, record)`` that interrupts the run by raising :class:`Killed` after ``step`` steps."""
    def hook(done: int, rec: dict) -> None:
        if done == step:
            raise Killed
    return hook
