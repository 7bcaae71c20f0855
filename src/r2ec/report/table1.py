"""Table 1 (ranking quality): the paper's layout, row groups per backbone, seeds, significance markers and the
Improve row; rendered by :mod:`r2ec.report.tables`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from r2ec import methods as registry
from r2ec.config import Params
from r2ec.errors import UserError
from r2ec.io import write_json
from r2ec.report.tables import (OURS, Grid, deviation_note, format_cells, latex_escape, load_metrics, metric_columns,
                                n_samples_text, present_methods, write_twins)


@dataclass(frozen=True)
class Row:
    """One Table 1 row: ``key`` names it in metrics.json and significance.json (the method, or
    ``<method>@<backbone tag>`` with several backbones), its runs are ``runs/<dataset>/<method>``."""
    key: str
    method: str
    runs: Path


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


def table1_rows(p: Params, runs: Path) -> list[tuple[str, str, list[Row]]]:
    """``(group name, backbone tag, rows)`` of Table 1, from the runs that exist. With one backbone: the registry's
    groups (tag ''). With several (``backbones``), the LLM-based methods that read a backbone get one group per
    backbone, "LLM-based (<tag>)", their runs in that backbone's tree (:func:`r2ec.config.backbones.backbone_groups`)
    and their keys ``<method>@<tag>``; the other methods keep their groups and keys."""
    from r2ec.config.backbones import backbone_groups, uses_backbone
    runs = Path(runs)
    shown = present_methods(runs, p.datasets, p.report.table1_methods)
    bbs = backbone_groups(p) if len(p.backbones) > 1 else []
    if not bbs:
        if not shown:
            raise UserError(f"{runs}: no run of {list(p.report.table1_methods)} on {list(p.datasets)} found")
        return [(g, "", [Row(m, m, runs) for m in ms]) for g, ms in _grouped(shown)]
    free = [m for m in shown if not (m in registry.names() and uses_backbone(m))]
    out = [(g, "", [Row(m, m, runs) for m in ms]) for g, ms in _grouped(free)]
    for b in bbs:
        root = runs.parent / b.prefix / "runs"
        ms = [m for m in present_methods(root, p.datasets, p.report.table1_methods)
              if m in registry.names() and uses_backbone(m)]
        if ms:
            out.append((f"LLM-based ({b.tag})", b.tag, [Row(f"{m}@{b.tag}", m, root) for m in ms]))
    if not any(rows for _, _, rows in out):
        raise UserError(f"{runs}: no run of {list(p.report.table1_methods)} on {list(p.datasets)} found")
    return out


def table1(p: Params, runs: Path, out: Path, metrics_out: Path | None = None,
           significance_out: Path | None = None) -> str:
    """Write Table 1 (``out`` .tex and its .md twin) in the paper's layout.

    Row groups Reference / Traditional / LLM-based (the method registry's groups, filtered by
    ``report.table1_methods`` and by which runs exist; with several ``backbones`` one LLM-based group per
    backbone, :func:`table1_rows`), H@K / N@K per dataset, best bold and second underlined, an Improve row per
    backbone (R²ec over the best non-R²ec baseline of the column among the backbone-free rows and its backbone's
    rows, %) and markers on R²ec's cells where a two-sided paired test over the test samples
    (``report.marker_test``) has p < ``report.alpha``. ``metrics_out`` receives ``{dataset: {row key: test
    metrics}}`` (for ``dvc metrics`` / ``dvc exp show``), ``significance_out`` every p-value
    (:func:`r2ec.report.significance.best_baseline_tests`; with several backbones per backbone under
    ``backbones``, the first backbone's also at the top level).

    With runs of several of ``seeds`` (:func:`seed_roots`) a cell is the mean over the seeds that have the run,
    ``± std``; the best baseline of a column is picked on those means, the per-sample tests (markers) use the
    first seed's runs, and a two-sided paired t-test over the seeds' run metrics
    (:func:`r2ec.report.significance.across_seed_ttest`) adds a ``p (seeds)`` row and ``across_seeds`` to
    ``significance_out``. With one seed's runs the outputs are those of a single-seed table."""
    from r2ec.report.significance import across_seed_ttest, best_baseline_tests
    runs = Path(runs)
    cols = metric_columns(p.eval.ks)
    groups = table1_rows(p, runs)
    rows = {r.key: r for _, _, rs in groups for r in rs}
    refs = set(registry.names("reference", "r2ec"))
    free = [k for _, tag, rs in groups if not tag for k in (r.key for r in rs) if rows[k].method not in refs]
    # per backbone tag: (R2ec's row key, the baselines it is compared with)
    ours = {tag: (r.key, free + [x.key for x in rs if x.method not in refs and x.key not in free])
            for _, tag, rs in groups for r in rs if r.method == OURS}
    values = {d: {k: v for k, r in rows.items() if (v := load_metrics(r.runs, d, r.method)) is not None}
              for d in p.datasets}
    roots = seed_roots(runs, p.seeds)
    stds: dict[str, dict] = {d: {} for d in p.datasets}
    per_seed: dict[str, dict] = {d: {} for d in p.datasets}
    if len(roots) > 1:  # a cell is the mean over the seeds' runs; per-sample tests stay on the first seed's runs
        for d in p.datasets:
            for k in values[d]:
                values[d][k], stds[d][k], per_seed[d][k] = _over_seeds(seed_roots(rows[k].runs, p.seeds), d,
                                                                      rows[k].method, values[d][k], cols)
    tests = {tag: {d: best_baseline_tests({k: r.runs / d / r.method for k, r in rows.items()}, target, values[d],
                                          base, cols, p.report.alpha) for d in p.datasets}
             for tag, (target, base) in ours.items()}
    across = {tag: {d: {c: across_seed_ttest(per_seed[d][ours[tag][0]][c], per_seed[d][r["baseline"]][c])
                        | {"method": ours[tag][0], "baseline": r["baseline"]} for c, r in tests[tag][d].items()}
                    for d in p.datasets} for tag in tests} if len(roots) > 1 else {}
    key = f"significant_{p.report.marker_test}"
    cells: dict[str, list] = {k: [] for k in rows}
    improve: dict[str, list[str]] = {tag: [] for tag in tests}
    for d in p.datasets:
        markers = {(ours[tag][0], c): ("better" if r["direction"] == "higher" else "worse")
                   for tag in tests for c, r in tests[tag][d].items() if r[key] and r["direction"] != "equal"}
        for k, cs in format_cells(list(rows), values[d], cols, p.report.decimals, markers, stds[d]).items():
            cells[k].extend(cs)
        for tag, (target, _) in ours.items():
            for c in cols:
                r = tests[tag][d].get(c)
                base = values[d][r["baseline"]][c] if r else None
                improve[tag].append(f"{100 * (values[d][target][c] - base) / base:+.1f}%" if base else "--")
    n_tex, n_md = n_samples_text(values)
    test_name = {"ttest": "paired t-test", "wilcoxon": "Wilcoxon signed-rank test"}[p.report.marker_test]
    of_seed = f" of the seed-{roots[0][0]} runs" if across else ""
    sig = (f"two-sided {test_name} over the test samples{of_seed}, $p < {p.report.alpha:g}$",
           f"two-sided {test_name} over the test samples{of_seed}, p < {p.report.alpha:g}")
    shown = [tag for tag, (t, base) in ours.items() if base and any(t in values[d] for d in p.datasets)]
    of_group = (" of its backbone group and the backbone-free groups" if len(ours) > 1 else "")
    note = ((rf" Improve: R$^2$ec over the best non-R$^2$ec baseline of the column{of_group}. $^{{*}}$ / "
             rf"$^{{\dagger}}$: R$^2$ec significantly better / worse than that baseline ({sig[0]}).",
             f" Improve: R²ec over the best non-R²ec baseline of the column{of_group}. * / †: R²ec significantly "
             f"better / worse than that baseline ({sig[1]}).") if shown else ("", ""))

    def label(name: str, tag: str) -> tuple[str, str]:
        return (name, name) if len(ours) < 2 else (f"{name} ({latex_escape(tag)})", f"{name} ({tag})")
    footer = [(label("Improve", tag), improve[tag]) for tag in shown]
    if across:
        seeds = ", ".join(str(s) for s, _ in roots)
        note = (note[0] + rf" Mean $\pm$ sample std over the seeds {seeds} (those with the run).",
                note[1] + f" Mean ± sample std over the seeds {seeds} (those with the run).")
        if shown:
            note = (note[0] + r" $p$ (seeds): two-sided paired t-test of R$^2$ec vs that baseline over the seeds.",
                    note[1] + " p (seeds): two-sided paired t-test of R²ec vs that baseline over the seeds.")
        for tag in shown:
            footer.append((label("$p$ (seeds)", tag)[:1] + label("p (seeds)", tag)[1:],
                           ["--" if (r := across[tag][d].get(c)) is None or r["ttest_p"] is None
                            else f"{r['ttest_p']:.3f}" for d in p.datasets for c in cols]))
    caption = (r"Full-ranking top-$K$ performance (history items masked). Best in bold, second underlined."
               + note[0] + f" Test samples: {n_tex}.",
               "Full-ranking top-K performance (history items masked). Best in bold, second underlined."
               + note[1] + f" Test samples: {n_md}.")
    marked, dev_note = deviation_note(p, list(dict.fromkeys(r.method for r in rows.values())))
    grid = Grid(caption, "tab:main", list(p.datasets), cols,
                [(name, [(r.method, cells[r.key]) for r in rs]) for name, _, rs in groups],
                footer, marked, dev_note)
    text = write_twins(grid, out, "table1", "Table 1")
    if metrics_out is not None:
        write_json(metrics_out, values if not across else
                   {d: {k: v | {f"{c}_std": sd for c, sd in stds[d][k].items()} for k, v in vs.items()}
                    for d, vs in values.items()})
    if significance_out is not None:
        write_json(significance_out, _significance_json(p, ours, tests, across, roots))
    return text


def _significance_json(p: Params, ours: dict, tests: dict, across: dict, roots: list) -> dict:
    """significance.json: the first backbone's tests at the top level; with several backbones all of them under
    ``backbones`` (tag -> the same layout)."""
    def one(tag: str) -> dict:
        out = {"method": ours[tag][0] if tag in ours else OURS, "split": "test", "alternative": "two-sided",
               "alpha": p.report.alpha, "marker_test": p.report.marker_test, "datasets": tests.get(tag, {})}
        if across:
            out |= {"seeds": [s for s, _ in roots], "per_sample_seed": roots[0][0],
                    "across_seeds": {"test": "paired t-test over the seeds' run metrics (scipy.stats.ttest_rel)",
                                     "alternative": "two-sided", "datasets": across.get(tag, {})}}
        return out
    tags = list(ours)
    top = one(tags[0] if tags else "")
    if len(tags) > 1:
        top["backbones"] = {tag: one(tag) for tag in tags}
    return top
