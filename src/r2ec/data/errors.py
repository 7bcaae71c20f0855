"""Errors and the bad-row accounting shared by the readers."""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path

from r2ec.errors import UserError

log = logging.getLogger("r2ec.data")


class DataError(UserError):  # UserError is a ValueError
    """An input file cannot be used; the message names the file and, where there is one, the line and field."""


class DownloadError(DataError):
    """A download failed or its checksum does not match; the message names the URL and the file."""


class BadRows:
    """Counts unusable input rows of one file by reason and keeps the first few examples for the message.

    A merely unusable row (malformed line, missing or wrongly typed required field, non-UTF-8 bytes) is skipped
    and counted; :meth:`finish` logs one summary line and raises :class:`DataError` when the bad share exceeds
    ``max_fraction``.
    """

    def __init__(self, file: str | Path, max_fraction: float, examples: int = 5):
        self.file = str(file)
        self.max_fraction = max_fraction
        self.counts: Counter[str] = Counter()
        self.examples: list[str] = []
        self._max_examples = examples
        self.rows_seen = 0  # maintained by streaming readers

    def add(self, line: int, reason: str, detail: str = "") -> None:
        """Record one bad row of kind ``reason`` at 1-based ``line`` (``detail`` only shows in the examples)."""
        self.counts[reason] += 1
        if len(self.examples) < self._max_examples:
            self.examples.append(f"{self.file}:{line}: {reason}{' ' + detail if detail else ''}")

    def add_rows(self, lines: list[int], reason: str, details: list[str] | None = None) -> None:
        """Record many bad rows of one kind (examples from the first few)."""
        for i, line in enumerate(lines[: self._max_examples]):
            self.add(line, reason, details[i] if details else "")
        if len(lines) > self._max_examples:
            self.counts[reason] += len(lines) - self._max_examples

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def finish(self, n_rows: int) -> dict[str, int]:
        """Check the bad share of ``n_rows`` data rows; return the counts by reason."""
        if self.total:
            share = self.total / max(n_rows, 1)
            summary = (f"{self.file}: skipped {self.total} of {n_rows} rows ({share:.2%}): "
                       + ", ".join(f"{k}: {v}" for k, v in sorted(self.counts.items())))
            if share > self.max_fraction:
                raise DataError(f"{summary}; more than data.max_bad_fraction={self.max_fraction:g} of the rows are "
                                f"unusable. First problems:\n  " + "\n  ".join(self.examples))
            log.warning("%s (first: %s)", summary, self.examples[0])
        return dict(sorted(self.counts.items()))
