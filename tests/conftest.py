"""Session-wide guards of the test suite."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _entries() -> set[str]:
    # hidden entries (.pytest_cache, .snakemake) and caches of the interpreter are not the tests' outputs
    return {p.name for p in ROOT.iterdir() if not p.name.startswith(".") and p.name != "__pycache__"}


@pytest.fixture(scope="session", autouse=True)
def no_files_left_in_the_checkout():
    """Tests write under tmp_path only: a cache path that resolves to '' (the working directory) once left
    distill_states/ in the checkout, where `git add -A` committed it."""
    before = _entries()
    yield
    new = sorted(_entries() - before)
    assert not new, f"the tests left {new} in {ROOT}"
