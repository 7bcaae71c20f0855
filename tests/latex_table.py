"""Parse the LaTeX (and Markdown) tables of ``r2ec.report.tables`` back into structure, so that table tests check
what a reader sees (groups, values, bold / underline, markers) against the metrics and p-values, not against a
stored copy of the output."""

import re
from dataclasses import dataclass

STYLE_TEX = {"bold": re.compile(r"^\\textbf\{(.*)\}$"), "under": re.compile(r"^\\underline\{(.*)\}$")}
STYLE_MD = {"bold": re.compile(r"^\*\*(.*)\*\*$"), "under": re.compile(r"^<u>(.*)</u>$")}
MARK_TEX = {r"$^{*}$": "better", r"$^{\dagger}$": "worse"}
MARK_MD = {"<sup>*</sup>": "better", "<sup>†</sup>": "worse"}
DEVIATION = (r"$^{\ddagger}$", "<sup>‡</sup>")
GROUP_TEX = re.compile(r"^\\multicolumn\{\d+\}\{l\}\{\\textit\{(.*)\}\} \\\\$")
FOOTER_TEX, FOOTER_MD = ("Improve", "$p$ (seeds)"), ("Improve", "p (seeds)")
NUMBER = re.compile(r"^(-?\d+\.\d+)(?: (?:\$\\pm\$|±) (\d+\.\d+))?$")


@dataclass
class Cell:
    value: float
    std: float | None
    style: str  # 'bold', 'under' or ''
    marker: str  # 'better', 'worse' or ''


@dataclass
class Table:
    columns: list[tuple[str, str]]  # (dataset label, metric)
    groups: list[tuple[str, list[str]]]  # (group name or '', row labels in order)
    rows: dict[str, list[Cell]]  # row label (deviation mark removed; "<group>: <label>" when repeated) -> cells
    deviated: set[str]  # rows carrying the deviation mark
    footer: dict[str, list[str]]  # e.g. Improve -> texts


def _cell(text: str, styles: dict, marks: dict) -> Cell:
    marker = ""
    for sign, name in marks.items():
        if text.endswith(sign):
            text, marker = text[: -len(sign)], name
    style = ""
    for name, pattern in styles.items():
        if m := pattern.match(text):
            text, style = m.group(1), name
    number = NUMBER.match(text)
    assert number, f"not a table number: {text!r}"
    return Cell(float(number.group(1)), float(number.group(2)) if number.group(2) else None, style, marker)


FORMATS = {"tex": (FOOTER_TEX, DEVIATION[0], STYLE_TEX, MARK_TEX), "md": (FOOTER_MD, DEVIATION[1], STYLE_MD, MARK_MD)}


def _add(table: "Table", label: str, cells: list[str], fmt: str) -> None:
    """A body line of the table in format ``fmt``: a footer row (Improve, p (seeds)) or a method's row."""
    footer, mark, styles, marks = FORMATS[fmt]
    if any(label == f or label.startswith(f + " (") for f in footer):  # "Improve (<backbone>)" with backbone groups
        table.footer[label] = cells
        return
    if label.endswith(mark):
        label = label[: -len(mark)]
        table.deviated.add(label)
    table.groups[-1][1].append(label)
    if label in table.rows:  # a method shown in several backbone groups: "<group>: <label>"
        label = f"{table.groups[-1][0]}: {label}"
    assert label not in table.rows, f"row {label!r} twice"
    table.rows[label] = [_cell(c, styles, marks) for c in cells]


def parse_tex(text: str) -> Table:
    body = text[text.index(r"\toprule"): text.index(r"\bottomrule")].splitlines()[1:]
    datasets = re.findall(r"\\multicolumn\{(\d+)\}\{c\}\{([^}]*)\}", body[0])
    metrics = [c.strip() for c in body[1].removesuffix(r" \\").split(" & ")[1:]]
    starts = [0]
    for n, _ in datasets:
        starts.append(starts[-1] + int(n))
    columns = [(d, m) for (_, d), a, b in zip(datasets, starts, starts[1:]) for m in metrics[a:b]]
    assert len(columns) == len(metrics), "the dataset header does not span the metric columns"
    table = Table(columns, [], {}, set(), {})
    for line in body[2:]:
        if line == r"\midrule":
            table.groups.append(("", []))
            continue
        if g := GROUP_TEX.match(line):
            table.groups[-1] = (g.group(1), [])
            continue
        label, *cells = line.removesuffix(r" \\").split(" & ")
        assert len(cells) == len(columns), f"{label}: {len(cells)} cells for {len(columns)} columns"
        _add(table, label, cells, "tex")
    table.groups = [g for g in table.groups if g[1]]
    return table


def parse_md(text: str) -> Table:
    lines = [ln for ln in text.splitlines() if ln.startswith("| ")]
    head = [c.strip() for c in lines[0].strip("|").split("|")][1:]
    columns = [tuple(h.rsplit(" ", 1)) for h in head]
    table = Table(columns, [("", [])], {}, set(), {})
    for line in lines[1:]:
        label, *cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if label.startswith("*") and not any(cells):
            table.groups.append((label.strip("*"), []))
            continue
        _add(table, label, cells, "md")
    table.groups = [g for g in table.groups if g[1]]
    return table
