"""Tables (LaTeX + a Markdown twin): Table 1 (ranking quality, paper layout, significance markers), Table 2
(ablations) and Table 3 (dataset statistics)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from dataclasses import field as dc_field
from pathlib import Path

from r2ec import methods as registry
from r2ec.config import MOVIELENS, Params
from r2ec.errors import UserError
from r2ec.io import write_text

DATASET_NAMES = {MOVIELENS: "MovieLens-100K", "Video_Games": "Games", "CDs_and_Vinyl": "CDs",
                 "Musical_Instruments": "Instruments"}
OURS = "r2ec"  # the method the Improve row and the significance markers are about
MARKERS = {"better": ("$^{*}$", "<sup>*</sup>"), "worse": (r"$^{\dagger}$", "<sup>†</sup>")}


def latex_escape(text: str) -> str:
    return text.replace("_", r"\_").replace("&", r"\&").replace("%", r"\%")


def dataset_label(name: str) -> str:
    return latex_escape(DATASET_NAMES.get(name, name))


def method_label(method: str) -> str:
    """A method's Table 1 label (LaTeX) from the method registry; an unregistered name as plain text."""
    return registry.get(method).label if method in registry.names() else latex_escape(method)


def plain_name(method: str) -> str:
    """A method's display name without LaTeX (R$^2$ec -> R²ec), for Markdown and figures."""
    name = registry.get(method).label if method in registry.names() else method
    for a, b in ((r"R$^2$ec", "R²ec"), ("D$^3$", "D³"), ("$R_d$", "R_d"), ("$R_c$", "R_c"), ("\\ ", " ")):
        name = name.replace(a, b)
    return name


def metric_columns(ks: tuple[int, ...]) -> list[str]:
    """``H@5, N@5, H@10, N@10, ...`` for the cut-offs ``ks``."""
    return [f"{m}@{k}" for k in ks for m in ("H", "N")]


def load_metrics(runs: Path, dataset: str, method: str) -> dict | None:
    """Test metrics of one run, or None when the run does not exist."""
    f = runs / dataset / method / "metrics.json"
    if not f.exists():
        return None
    try:
        m = json.loads(f.read_text())
    except json.JSONDecodeError as e:
        raise UserError(f"{f}: not valid JSON ({e})") from None
    if "test" not in m:
        raise UserError(f"{f}: no 'test' section")
    return m["test"]


def _places(values: list[float | None], decimals: int) -> list[int | None]:
    """0 for the best of a column, 1 for the second best (on printed values; ties share), else None."""
    present = sorted({round(v, decimals) for v in values if v is not None}, reverse=True)[:2]
    return [present.index(round(v, decimals)) if v is not None and round(v, decimals) in present else None
            for v in values]


@dataclass
class Grid:
    """A results table before rendering: row groups of (method, cells) over dataset x metric columns.

    A cell is ``(text, place, marker)``: place 0 = best (bold), 1 = second (underlined); marker a
    :data:`MARKERS` key or ''. ``footer`` rows (e.g. Improve) follow the groups, unranked."""
    caption: tuple[str, str]  # (LaTeX, Markdown)
    label: str
    datasets: list[str]
    cols: list[str]
    groups: list[tuple[str, list[tuple[str, list[tuple[str, int | None, str]]]]]]
    footer: list[tuple[tuple[str, str], list[str]]] = dc_field(default_factory=list)
    marked: set[str] = dc_field(default_factory=set)  # rows run under a deviation from the paper (DEVIATION_MARK)
    note: tuple[str, str] = ("", "")  # (LaTeX, Markdown) footnote under the table


# (best, second best, index into MARKERS' pairs) per output format
STYLES = {"tex": (r"\textbf{%s}", r"\underline{%s}", 0), "md": ("**%s**", "<u>%s</u>", 1)}
# a row run under a deviation of its params from the paper's setting (r2ec.config.deviations); not a MARKERS sign
DEVIATION_MARK = (r"$^{\ddagger}$", "<sup>‡</sup>")


def deviation_note(p: Params, methods: list[str]) -> tuple[set[str], tuple[str, str]]:
    """The rows of ``methods`` run under a deviation from the paper (a registered key whose value in ``p`` is not
    the paper's and that bears on the row's method) and the footnote listing those deviations ('' when none)."""
    from r2ec.config.deviations import applies, in_effect, value_of
    from r2ec.config.profiles import yaml_value
    items, marked = [], set()
    for d in in_effect(p):
        rows = [m for m in methods if applies(d, m)]
        if not rows:
            continue
        marked.update(rows)
        where = "all rows" if len(rows) == len(methods) else ", ".join(plain_name(m) for m in rows)
        items.append((d.key, yaml_value(value_of(p, d.key)), yaml_value(d.paper), where))
    if not items:
        return set(), ("", "")
    head = ("run under deviations from the paper's setting (docs/deviations.md; none under "
            "configs/profiles/paper.yaml): ")
    tex = DEVIATION_MARK[0] + " " + latex_escape(head) + "; ".join(
        rf"\texttt{{{latex_escape(k)}}} = {latex_escape(v)} (paper {latex_escape(pv)}; "
        f"{latex_escape(w).replace('R²ec', 'R$^2$ec').replace('D³', 'D$^3$')})" for k, v, pv, w in items) + "."
    md = "‡ " + head + "; ".join(f"`{k}` = `{v}` (paper `{pv}`; {w})" for k, v, pv, w in items) + "."
    return marked, (tex, md)


def _cell(text: str, place: int | None, marker: str, style: str) -> str:
    best, second, i = STYLES[style]
    if style == "tex":
        text = text.replace("±", r"$\pm$")  # mean ± std over seeds
    if place is not None:
        text = (best, second)[place] % text
    return text + (MARKERS[marker][i] if marker else "")


def render_tex(g: Grid, command: str) -> str:
    """LaTeX (booktabs) of a grid: one column group per dataset, group names as italic spanning rows."""
    ncol, width = len(g.cols), 1 + len(g.cols) * len(g.datasets)
    lines = [
        f"% Generated by `python -m r2ec {command}`; do not edit.",
        r"\begin{table}[t]",
        r"\centering",
        rf"\caption{{{g.caption[0]}}}",
        rf"\label{{{g.label}}}",
        r"\resizebox{\linewidth}{!}{%",
        r"\begin{tabular}{l" + ("|" + "c" * ncol) * len(g.datasets) + "}",
        r"\toprule",
        "Dataset & " + " & ".join(rf"\multicolumn{{{ncol}}}{{c}}{{{dataset_label(d)}}}" for d in g.datasets)
        + r" \\",
        "Method & " + " & ".join(g.cols * len(g.datasets)) + r" \\",
    ]
    for name, rows in g.groups:
        lines.append(r"\midrule")
        if name:
            lines.append(rf"\multicolumn{{{width}}}{{l}}{{\textit{{{latex_escape(name)}}}}} \\")
        for m, cells in rows:
            lines.append(f"{method_label(m)}{DEVIATION_MARK[0] if m in g.marked else ''} & "
                         + " & ".join(_cell(*c, "tex") for c in cells) + r" \\")
    if g.footer:
        lines.append(r"\midrule")
        for (label, _), texts in g.footer:
            lines.append(f"{label} & " + " & ".join(latex_escape(t) for t in texts) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}}"]
    if g.note[0]:
        lines.append(r"\par\smallskip\parbox{\linewidth}{\footnotesize " + g.note[0] + "}")
    lines += [r"\end{table}", ""]
    return "\n".join(lines)


def render_md(g: Grid, title: str) -> str:
    """The Markdown twin of :func:`render_tex` (bold = best, underlined = second)."""
    head = [f"{DATASET_NAMES.get(d, d)} {c}" for d in g.datasets for c in g.cols]
    lines = [f"**{title}.** {g.caption[1]}", "", "| Method | " + " | ".join(head) + " |",
             "|---|" + "---:|" * len(head)]
    for name, rows in g.groups:
        if name:
            lines.append(f"| *{name}* |" + " |" * len(head))
        for m, cells in rows:
            mark = DEVIATION_MARK[1] if m in g.marked else ""
            lines.append(f"| {plain_name(m)}{mark} | " + " | ".join(_cell(*c, "md") for c in cells) + " |")
    for (_, label), texts in g.footer:
        lines.append(f"| {label} | " + " | ".join(texts) + " |")
    if g.note[1]:
        lines += ["", g.note[1]]
    return "\n".join(lines) + "\n"


def write_twins(g: Grid, out: Path, command: str, title: str) -> str:
    text = render_tex(g, command)
    write_text(out, text)
    write_text(Path(out).with_suffix(".md"), render_md(g, title))
    return text


def present_methods(runs: Path, datasets: tuple[str, ...], methods: tuple[str, ...]) -> list[str]:
    return [m for m in methods if any((runs / d / m / "metrics.json").exists() for d in datasets)]


def n_samples_text(values: dict[str, dict[str, dict]]) -> tuple[str, str]:
    parts = []
    for d, per_method in values.items():
        n = sorted({int(v["n_samples"]) for v in per_method.values() if "n_samples" in v})
        parts.append((d, "/".join(f"{x:,}" for x in n) or "--"))
    return (", ".join(f"{dataset_label(d)} {n.replace(',', '{,}')}" for d, n in parts),
            ", ".join(f"{DATASET_NAMES.get(d, d)} {n}" for d, n in parts))


def format_cells(methods: list[str], values: dict[str, dict], cols: list[str], decimals: int,
           markers: dict[tuple[str, str], str] | None = None,
           stds: dict[str, dict] | None = None) -> dict[str, list[tuple[str, int | None, str]]]:
    """Per method, the formatted cells of one dataset's columns with places (and markers of (method, col));
    a value with a std over seeds (``stds``: method -> col -> std) reads ``mean ± std``."""
    out: dict[str, list] = {m: [] for m in methods}
    for c in cols:
        vals = [values[m].get(c) if m in values else None for m in methods]
        for m, v, place in zip(methods, vals, _places(vals, decimals)):
            sd = (stds or {}).get(m, {}).get(c)
            text = "--" if v is None else f"{v:.{decimals}f}" + ("" if sd is None else f" ± {sd:.{decimals}f}")
            out[m].append((text, place, (markers or {}).get((m, c), "")))
    return out


def table2(p: Params, runs: Path, out: Path) -> str:
    """Write Table 2 (ablations of R²ec, ``report.table2_methods`` in order; rows without a run left out) as .tex
    and .md, in Table 1's column layout."""
    runs = Path(runs)
    cols = metric_columns(p.eval.ks)
    shown = present_methods(runs, p.datasets, p.report.table2_methods)
    if not shown:
        raise UserError(f"{runs}: no run of {list(p.report.table2_methods)} on {list(p.datasets)} found")
    values = {d: {m: v for m in shown if (v := load_metrics(runs, d, m)) is not None} for d in p.datasets}
    cells: dict[str, list] = {m: [] for m in shown}
    for d in p.datasets:
        for m, cs in format_cells(shown, values[d], cols, p.report.decimals).items():
            cells[m].extend(cs)
    n_tex, n_md = n_samples_text(values)
    caption = (rf"Ablations of R$^2$ec (full ranking, history items masked). Best in bold, second underlined. "
               rf"Test samples: {n_tex}.",
               f"Ablations of R²ec (full ranking, history items masked). Best in bold, second underlined. "
               f"Test samples: {n_md}.")
    grid = Grid(caption, "tab:ablation", list(p.datasets), cols, [("", [(m, cells[m]) for m in shown])])
    return write_twins(grid, out, "table2", "Table 2")


def table3(p: Params, data_dirs: list[Path], out: Path) -> str:
    """Write Table 3: users, items, density, interactions and samples per split for each prepared dataset."""
    rows = []
    for d in data_dirs:
        f = d / "stats.json"
        if not f.exists():
            raise UserError(f"{f}: missing (run the prepare stage)")
        s = json.loads(f.read_text())
        try:
            sp = s["samples"]
            nums = [s["users"], s["items"], s["interactions"]]
            splits = [sp["train"], sp["valid"], sp["test"]]
            fmt = [f"{int(n):,}".replace(",", "{,}") for n in nums + splits]
            rows.append(f"{dataset_label(d.name)} & {fmt[0]} & {fmt[1]} & {fmt[2]} & {100 * s['density']:.3f}\\% & "
                        f"{fmt[3]} & {fmt[4]} & {fmt[5]} \\\\")
        except KeyError as e:
            raise UserError(f"{f}: missing field {e}") from None
    lines = [
        "% Generated by `python -m r2ec table3`; do not edit.",
        r"\begin{table}[t]",
        r"\centering",
        r"\caption{Dataset statistics (density = interactions / (users $\times$ items)).}",
        r"\label{tab:data}",
        r"\begin{tabular}{lrrrrrrr}",
        r"\toprule",
        r"Dataset & \#Users & \#Items & \#Interactions & Density & \#Train & \#Valid & \#Test \\",
        r"\midrule",
        *rows,
        r"\bottomrule",
        r"\end{tabular}",
        r"\end{table}",
        "",
    ]
    text = "\n".join(lines)
    write_text(out, text)
    return text
