"""The project speaks of itself as a product: no tracked file labels the period of work in which something was built
or measured (a numbered work period, an ordinal round, a sprint, a numbered iteration or phase). Results carry a date, a
machine, a commit and a command instead (benchmarks/RESULTS.md)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SELF = Path(__file__).resolve().relative_to(ROOT).as_posix()

_ORDINALS = "first|second|third|fourth|fifth|sixth|seventh|eighth|ninth|tenth|eleventh|twelfth"
# phrases, case-insensitive; "round" alone (rounding, round(), LangPTune's alternating rounds) and "session" alone
# (HTTP / library sessions) are fine
LABELS = re.compile(
    r"\bsessions? ?\d+"                                   # the word and a number, with or without a space
    r"|\b(?:this|previous|last|next|that) session\b"      # a work period named relative to another
    r"|\bsession (?:machines?|label)"                     # the machines of a work period
    r"|\brounds? \d+\b"                                   # "round" and a number
    r"|\b(?:" + _ORDINALS + r") rounds?\b"                # an ordinal and "round"
    r"|\bsprints?\b"                                      # the agile word
    r"|\biterations? \d+\b"                               # "iteration" and a number
    r"|\bphases? \d+\b"                                   # "phase" and a number
    r"|\bstage \d+ of (?:the )?(?:development|work)\b",   # a numbered stage of the work
    re.IGNORECASE)
# a work-period tag in a file name: "s" and a one- or two-digit number between separators
NAME_LABEL = re.compile(r"(?:^|[-_.])s\d{1,2}(?=[-_.]|$)")


def tracked_files() -> list[str]:
    out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    return [p for p in out.decode().split("\0") if p]


def _text(path: Path) -> str | None:
    try:
        data = path.read_bytes()
    except (FileNotFoundError, IsADirectoryError):  # deleted in the work tree, or a submodule
        return None
    if b"\0" in data[:8192]:
        return None
    return data.decode("utf-8", errors="replace")


def label_hits(files: list[str]) -> list[str]:
    """``path:line: text`` of every work-period label in the given tracked files (paths relative to ROOT)."""
    hits = []
    for rel in files:
        if rel == SELF:
            continue
        if rel.startswith(("benchmarks/", "docs/")) and NAME_LABEL.search(Path(rel).stem):
            hits.append(f"{rel}: file name carries a work-period tag")
        text = _text(ROOT / rel)
        if text is None:
            continue
        for n, line in enumerate(text.splitlines(), 1):
            m = LABELS.search(line)
            if m:
                hits.append(f"{rel}:{n}: {m.group(0)!r} in {line.strip()[:120]!r}")
    return hits


def _label_shaped(*words: str) -> str:
    """A phrase of the shape the patterns catch, assembled from its words so that this file holds none itself."""
    return " ".join(words)


def test_patterns_catch_labels_and_spare_ordinary_words():
    labelled = (_label_shaped("measured in", "session", "14"), "session" + "13 r2ec",
                _label_shaped("the", "fifth", "round", "below"), _label_shaped("Round", "3:"),
                _label_shaped("a", "sprint"), _label_shaped("iteration", "2", "of the work"), _label_shaped("phase", "1"),
                _label_shaped("taken at the start of", "this", "session"))
    for bad in labelled:
        assert LABELS.search(bad), bad
    for fine in ("round(x, 3)", "rounding of bf16", "one alternating round of REBEL", "requests.Session()",
                 "maximum rounds", "bf16 would round them", "a session of SQLAlchemy", "iterations of k-means"):
        assert not LABELS.search(fine), fine
    assert NAME_LABEL.search("main_job-cpu-2026-12-03-" + "s" + "14")
    assert not NAME_LABEL.search("main_job-cpu-2026-12-03-e406c79")
    assert not NAME_LABEL.search("r2ec_speed-shared_prefix-cpu-2026-12-03")


def test_no_tracked_file_labels_a_work_period():
    hits = label_hits(tracked_files())
    assert not hits, "work-period labels (say what, when, where and how instead):\n" + "\n".join(hits)
