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
from r2ec.io import write_json, write_text

DATASET_NAMES = {MOVIELENS: "MovieLens-100K", "Video_Games": "Games", "CDs_and_Vinyl": "CDs",
                 "Musical_Instruments": "Instruments"}
OURS = "r2ec"  # the method the Improve row and the significance markers are about
MARKERS = {"better": ("$^{*}$", "<sup>*</sup>"), "worse": (r"$^{\dagger}$", "<sup>†</sup>")}


def _latex_escape(text: str) -> str:
    return text.replace("_", r"\_").replace("&", r"\&").replace("%", r"\%")


def dataset_label(name: str) -> str:
    return _latex_escape(DATASET_NAMES.get(name, name))


def method_label(method: str) -> str:
    """A method's Table 1 label (LaTeX) from the method registry; an unregistered name as plain text."""
    return registry.get(method).label if method in registry.names() else _latex_escape(method)


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
    tex = DEVIATION_MARK[0] + " " + _latex_escape(head) + "; ".join(
        rf"\texttt{{{_latex_escape(k)}}} = {_latex_escape(v)} (paper {_latex_escape(pv)}; "
        f"{_latex_escape(w).replace('R²ec', 'R$^2$ec').replace('D³', 'D$^3$')})" for k, v, pv, w in items) + "."
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
            lines.append(rf"\multicolumn{{{width}}}{{l}}{{\textit{{{name}}}}} \\")
        for m, cells in rows:
            lines.append(f"{method_label(m)}{DEVIATION_MARK[0] if m in g.marked else ''} & "
                         + " & ".join(_cell(*c, "tex") for c in cells) + r" \\")
    if g.footer:
        lines.append(r"\midrule")
        for (label, _), texts in g.footer:
            lines.append(f"{label} & " + " & ".join(_latex_escape(t) for t in texts) + r" \\")
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


def _write_twins(g: Grid, out: Path, command: str, title: str) -> str:
    text = render_tex(g, command)
    write_text(out, text)
    write_text(Path(out).with_suffix(".md"), render_md(g, title))
    return text


def _present(runs: Path, datasets: tuple[str, ...], methods: tuple[str, ...]) -> list[str]:
    return [m for m in methods if any((runs / d / m / "metrics.json").exists() for d in datasets)]


def _n_samples_text(values: dict[str, dict[str, dict]]) -> tuple[str, str]:
    parts = []
    for d, per_method in values.items():
        n = sorted({int(v["n_samples"]) for v in per_method.values() if "n_samples" in v})
        parts.append((d, "/".join(f"{x:,}" for x in n) or "--"))
    return (", ".join(f"{dataset_label(d)} {n.replace(',', '{,}')}" for d, n in parts),
            ", ".join(f"{DATASET_NAMES.get(d, d)} {n}" for d, n in parts))


def _cells(methods: list[str], values: dict[str, dict], cols: list[str], decimals: int,
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


def seed_roots(runs: Path, seeds: tuple[int, ...]) -> list[tuple[int, Path]]:
    """``(seed, runs root)`` of each of ``seeds`` whose runs exist (Snakemake's layout): ``runs`` for the first
    seed, ``runs/../seeds/<seed>/runs`` for each further one."""
    runs = Path(runs)
    extra = [(s, runs.parent / "seeds" / str(s) / "runs") for s in seeds[1:]]
    return [(seeds[0], runs)] + [(s, r) for s, r in extra if r.is_dir()]


def _over_seeds(roots: list[tuple[int, Path]], dataset: str, method: str, first: dict,
                cols: list[str]) -> tuple[dict, dict, dict]:
    """``(mean metrics, std per col, {col: {seed: value}})`` of a method over the seeds that have its run; the
    mean dict keeps the first seed's other keys (n_samples, ...), a std (sample, ddof=1) needs two runs."""
    import statistics
    runs = {roots[0][0]: first}
    for s, r in roots[1:]:
        if (v := load_metrics(r, dataset, method)) is not None:
            runs[s] = v
    per = {c: {s: v[c] for s, v in runs.items() if v.get(c) is not None} for c in cols}
    mean = first | {c: statistics.fmean(x.values()) for c, x in per.items() if x}
    std = {c: statistics.stdev(x.values()) for c, x in per.items() if len(x) > 1}
    return mean, std, per


def _grouped(shown: list[str]) -> list[tuple[str, list[str]]]:
    """Table 1's row groups (the registry's, in the paper's order) of the methods shown; within a group the
    methods keep the registry's order, an unregistered method joins the last group."""
    registered = registry.names()
    groups = [(g, [m for m in registered if m in shown and registry.get(m).group == g]) for g in registry.GROUPS]
    groups[-1][1].extend(m for m in shown if m not in registered)
    return [(name, ms) for name, ms in groups if ms]


def table1(p: Params, runs: Path, out: Path, metrics_out: Path | None = None,
           significance_out: Path | None = None) -> str:
    """Write Table 1 (``out`` .tex and its .md twin) in the paper's layout.

    Row groups Reference / Traditional / LLM-based (the method registry's groups, filtered by
    ``report.table1_methods`` and by which runs exist), H@K / N@K per dataset, best bold and second underlined,
    an Improve row (R²ec over the best non-R²ec baseline of the column, %) and markers on R²ec's cells where a
    two-sided paired test over the test samples (``report.marker_test``) has p < ``report.alpha``.
    ``metrics_out`` receives ``{dataset: {method: test metrics}}`` (for ``dvc metrics`` / ``dvc exp show``),
    ``significance_out`` every p-value (:func:`r2ec.report.significance.best_baseline_tests`).

    With runs of several of ``seeds`` (:func:`seed_roots`) a cell is the mean over the seeds that have the run,
    ``± std``; the best baseline of a column is picked on those means, the per-sample tests (markers) use the
    first seed's runs, and a two-sided paired t-test over the seeds' run metrics
    (:func:`r2ec.report.significance.across_seed_ttest`) adds a ``p (seeds)`` row and ``across_seeds`` to
    ``significance_out``. With one seed's runs the outputs are those of a single-seed table."""
    from r2ec.report.significance import across_seed_ttest, best_baseline_tests
    runs = Path(runs)
    cols = metric_columns(p.eval.ks)
    shown = _present(runs, p.datasets, p.report.table1_methods)
    if not shown:
        raise UserError(f"{runs}: no run of {list(p.report.table1_methods)} on {list(p.datasets)} found")
    groups = _grouped(shown)
    order = [m for _, ms in groups for m in ms]
    baselines = [m for m in order if m not in registry.names("reference", "r2ec")]
    values = {d: {m: v for m in order if (v := load_metrics(runs, d, m)) is not None} for d in p.datasets}
    roots = seed_roots(runs, p.seeds)
    stds: dict[str, dict] = {d: {} for d in p.datasets}
    per_seed: dict[str, dict] = {d: {} for d in p.datasets}
    if len(roots) > 1:  # a cell is the mean over the seeds' runs; per-sample tests stay on the first seed's runs
        for d in p.datasets:
            for m in values[d]:
                values[d][m], stds[d][m], per_seed[d][m] = _over_seeds(roots, d, m, values[d][m], cols)
    tests = {d: best_baseline_tests(runs, d, OURS, values[d], baselines, cols, p.report.alpha) for d in p.datasets}
    across = {d: {c: across_seed_ttest(per_seed[d][OURS][c], per_seed[d][r["baseline"]][c]) | {
        "method": OURS, "baseline": r["baseline"]} for c, r in tests[d].items()} for d in p.datasets} \
        if len(roots) > 1 else {}
    key = f"significant_{p.report.marker_test}"
    cells: dict[str, list] = {m: [] for m in order}
    improve: list[str] = []
    for d in p.datasets:
        markers = {(OURS, c): ("better" if r["direction"] == "higher" else "worse")
                   for c, r in tests[d].items() if r[key] and r["direction"] != "equal"}
        for m, cs in _cells(order, values[d], cols, p.report.decimals, markers, stds[d]).items():
            cells[m].extend(cs)
        for c in cols:
            r = tests[d].get(c)
            base = values[d][r["baseline"]][c] if r else None
            improve.append(f"{100 * (values[d][OURS][c] - base) / base:+.1f}%" if base else "--")
    n_tex, n_md = _n_samples_text(values)
    test_name = {"ttest": "paired t-test", "wilcoxon": "Wilcoxon signed-rank test"}[p.report.marker_test]
    of_seed = f" of the seed-{roots[0][0]} runs" if across else ""
    sig = (f"two-sided {test_name} over the test samples{of_seed}, $p < {p.report.alpha:g}$",
           f"two-sided {test_name} over the test samples{of_seed}, p < {p.report.alpha:g}")
    has_ours = bool(baselines) and any(OURS in values[d] for d in p.datasets)
    ours = ((r" Improve: R$^2$ec over the best non-R$^2$ec baseline of the column. $^{*}$ / $^{\dagger}$: R$^2$ec "
             rf"significantly better / worse than that baseline ({sig[0]}).",
             " Improve: R²ec over the best non-R²ec baseline of the column. * / †: R²ec significantly better / "
             f"worse than that baseline ({sig[1]}).") if has_ours else ("", ""))
    footer = [(("Improve", "Improve"), improve)] if has_ours else []
    if across:
        seeds = ", ".join(str(s) for s, _ in roots)
        ours = (ours[0] + rf" Mean $\pm$ sample std over the seeds {seeds} (those with the run).",
                ours[1] + f" Mean ± sample std over the seeds {seeds} (those with the run).")
        if has_ours:
            ours = (ours[0] + r" $p$ (seeds): two-sided paired t-test of R$^2$ec vs that baseline over the seeds.",
                    ours[1] + " p (seeds): two-sided paired t-test of R²ec vs that baseline over the seeds.")
            footer.append((("$p$ (seeds)", "p (seeds)"),
                           ["--" if (r := across[d].get(c)) is None or r["ttest_p"] is None else f"{r['ttest_p']:.3f}"
                            for d in p.datasets for c in cols]))
    caption = (r"Full-ranking top-$K$ performance (history items masked). Best in bold, second underlined."
               + ours[0] + f" Test samples: {n_tex}.",
               "Full-ranking top-K performance (history items masked). Best in bold, second underlined."
               + ours[1] + f" Test samples: {n_md}.")
    marked, note = deviation_note(p, order)
    grid = Grid(caption, "tab:main", list(p.datasets), cols,
                [(name, [(m, cells[m]) for m in ms]) for name, ms in groups],
                footer, marked, note)
    text = _write_twins(grid, out, "table1", "Table 1")
    if metrics_out is not None:
        write_json(metrics_out, values if not across else
                   {d: {m: v | {f"{c}_std": sd for c, sd in stds[d][m].items()} for m, v in vs.items()}
                    for d, vs in values.items()})
    if significance_out is not None:
        sig_json = {"method": OURS, "split": "test", "alternative": "two-sided", "alpha": p.report.alpha,
                    "marker_test": p.report.marker_test, "datasets": tests}
        if across:
            sig_json |= {"seeds": [s for s, _ in roots], "per_sample_seed": roots[0][0],
                         "across_seeds": {"test": "paired t-test over the seeds' run metrics (scipy.stats.ttest_rel)",
                                          "alternative": "two-sided", "datasets": across}}
        write_json(significance_out, sig_json)
    return text


def table2(p: Params, runs: Path, out: Path) -> str:
    """Write Table 2 (ablations of R²ec, ``report.table2_methods`` in order; rows without a run left out) as .tex
    and .md, in Table 1's column layout."""
    runs = Path(runs)
    cols = metric_columns(p.eval.ks)
    shown = _present(runs, p.datasets, p.report.table2_methods)
    if not shown:
        raise UserError(f"{runs}: no run of {list(p.report.table2_methods)} on {list(p.datasets)} found")
    values = {d: {m: v for m in shown if (v := load_metrics(runs, d, m)) is not None} for d in p.datasets}
    cells: dict[str, list] = {m: [] for m in shown}
    for d in p.datasets:
        for m, cs in _cells(shown, values[d], cols, p.report.decimals).items():
            cells[m].extend(cs)
    n_tex, n_md = _n_samples_text(values)
    caption = (rf"Ablations of R$^2$ec (full ranking, history items masked). Best in bold, second underlined. "
               rf"Test samples: {n_tex}.",
               f"Ablations of R²ec (full ranking, history items masked). Best in bold, second underlined. "
               f"Test samples: {n_md}.")
    grid = Grid(caption, "tab:ablation", list(p.datasets), cols, [("", [(m, cells[m]) for m in shown])])
    return _write_twins(grid, out, "table2", "Table 2")


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
