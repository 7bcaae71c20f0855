"""The documentation: docs/configuration.md is generated from the params dataclasses and params.yaml (stale = a
failure), and the README and docs/ link only to files inside the repository that exist."""

from __future__ import annotations

import re
from pathlib import Path

from r2ec import config as C
from r2ec.config.docs import markdown

ROOT = Path(__file__).resolve().parents[1]
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


def test_configuration_page_is_generated_from_the_params():
    committed = (ROOT / "docs/configuration.md").read_text(encoding="utf-8")
    assert committed == markdown(C.read_raw(ROOT / "params.yaml")), \
        "docs/configuration.md is stale: run python -m r2ec schema --docs docs/configuration.md"


def test_configuration_page_documents_every_key():
    text = (ROOT / "docs/configuration.md").read_text(encoding="utf-8")
    raw = C.read_raw(ROOT / "params.yaml")
    for key, value in raw.items():
        keys = [f"{key}.{k}" for k in value] if isinstance(value, dict) else [key]
        for k in keys:
            assert f"| `{k}` |" in text, k


def _pages() -> list[Path]:
    return [ROOT / "README.md", ROOT / "benchmarks/RESULTS.md", *sorted((ROOT / "docs").rglob("*.md"))]


def test_links_stay_inside_the_repository_and_resolve():
    bad = []
    for page in _pages():
        if not page.exists():
            continue
        for n, line in enumerate(page.read_text(encoding="utf-8").splitlines(), 1):
            for target in LINK.findall(line):
                if re.match(r"[a-z]+:", target):  # http(s), mailto: outside links are citations, not files
                    continue
                path = (page.parent / target).resolve()
                if ROOT not in path.parents and path != ROOT or not path.exists():
                    bad.append(f"{page.relative_to(ROOT)}:{n}: {target}")
    assert not bad, "links to files outside the repository or missing:\n" + "\n".join(bad)


def test_readme_is_short():
    assert len((ROOT / "README.md").read_text(encoding="utf-8").splitlines()) <= 250
