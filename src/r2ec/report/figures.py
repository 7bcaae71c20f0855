"""Figures from run logs (matplotlib, Agg): the R2ec learning curve, RecPO training dynamics, parameter sweeps.

``r2ec_learning.png`` (+ ``.pdf``), one row per dataset:
(a) valid N@10 vs training step and (b) vs training minutes (``valid_log.jsonl``: ``step``, ``N@10``,
``elapsed_s``) for every R2ec run that has a validation log; (c) the RecPO train reward (``reward``, mean over
the step's trajectories) and (d) the contrastive train loss (``item_loss`` of ``r2ec_no_reasoning``) vs step
(``train_log.jsonl``). A run whose reasoning variant was warm-started from the contrastive run is drawn from
its own step 0 (its first point is the warm start's quality).
"""

from __future__ import annotations

import json
from pathlib import Path

from r2ec.io import atomic_path, read_jsonl
from r2ec.report.tables import DATASET_NAMES
from r2ec.report.tables import plain_name as _label

SELECT = "N@10"


def _mark(points) -> str | None:
    """A marker for short curves: a line through a single step would not show at all."""
    return "." if len(points) < 20 else None


def learning_figure(runs: Path, datasets: list[str], methods: list[str], out: Path) -> list[Path]:
    """Draw the learning curves of ``methods`` (those with logs) for each dataset; write PNG and PDF.

    Returns the written paths (a figure that says so when no run has a validation log).
    """
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    logs = {}
    for ds in datasets:
        for m in methods:
            d = Path(runs) / ds / m
            valid = read_jsonl(d / "valid_log.jsonl")
            if valid:
                logs[(ds, m)] = (valid, read_jsonl(d / "train_log.jsonl"))
    rows = [ds for ds in datasets if any(k[0] == ds for k in logs)]
    fig, axes = plt.subplots(max(len(rows), 1), 4, figsize=(17, 3.6 * max(len(rows), 1)), squeeze=False)
    if not rows:  # the pipeline was configured without R2ec variants: say so instead of failing the target
        for a in axes[0]:
            a.set_axis_off()
        fig.text(0.5, 0.5, f"no R2ec run with a validation log under {runs}", ha="center", fontsize=11)
    for r, ds in enumerate(rows):
        ax = axes[r]
        name = DATASET_NAMES.get(ds, ds)
        for m in methods:
            if (ds, m) not in logs:
                continue
            valid, train = logs[(ds, m)]
            steps = [v["step"] for v in valid]
            ys = [v.get(SELECT, float("nan")) for v in valid]
            ax[0].plot(steps, ys, marker="o", label=_label(m))
            if all("elapsed_s" in v for v in valid):
                ax[1].plot([v["elapsed_s"] / 60 for v in valid], ys, marker="o", label=_label(m))
            rew = [(t["step"], t["reward"]) for t in train if "reward" in t]
            if rew:
                ax[2].plot(*zip(*rew), lw=1, marker=_mark(rew), label=_label(m))
            loss = [(t["step"], t["item_loss"]) for t in train if "reward" not in t and "item_loss" in t]
            if loss:
                ax[3].plot(*zip(*loss), lw=1, marker=_mark(loss), label=_label(m))
            fit = Path(runs) / ds / m / "readout_fit.json"
            if fit.exists():  # the readout's fit (full-catalogue softmax over fixed states), one point per epoch
                fl = json.loads(fit.read_text()).get("losses") or []
                ax[3].plot(range(1, len(fl) + 1), fl, lw=1, ls="--", label=f"{_label(m)}: readout fit (x = epoch)")
        for a, (title, xl, yl) in zip(ax, [
                (f"{name}: valid {SELECT}", "step", SELECT), (f"{name}: valid {SELECT}", "training minutes", SELECT),
                (f"{name}: RecPO train reward", "step", "mean reward"),
                (f"{name}: contrastive train loss", "step (readout fit: epoch)", "InfoNCE loss")]):
            a.set_title(title, fontsize=10)
            a.set_xlabel(xl)
            a.set_ylabel(yl)
            a.grid(alpha=0.3)
            if a.get_legend_handles_labels()[0]:
                a.legend(fontsize=8)
        for a in ax[:2]:  # from 0: autoscaled, a change far inside valid's noise would fill the panel
            top = a.get_ylim()[1]
            a.set_ylim(0, top * 1.15 if top > 0 else 1.0)
    if rows:
        fig.tight_layout()
    return _save(fig, out)


# ----------------------------------------------------------------------------------------------------------
# RecPO training dynamics (paper Fig. 2 style) and parameter sweeps (paper Fig. 3 style)

DYNAMICS_RUNS = ("r2ec", "r2ec_rloo")  # r2ec_rloo: `train --method r2ec --out RUNS/<ds>/r2ec_rloo -S recpo.advantage=rloo`
SWEEP_KEYS = {"beta": "recpo.beta", "temperature": "recpo.temperature", "group_size": "recpo.group_size"}


def sweep_dir(key: str, value: float | int) -> str:
    """Run directory name of one sweep point (a sibling of the ``r2ec`` run, so the warm start is found)."""
    return f"r2ec@{key}={value}"


def _advantage(run: Path) -> str:
    """``GRPO`` / ``RLOO`` from a run's config.json (``recpo.advantage``), '' when unknown."""
    f = run / "config.json"
    if not f.exists():
        return ""
    import json
    adv = (json.loads(f.read_text()).get("recpo") or {}).get("advantage", "")
    return str(adv).upper()


def _save(fig, out: Path) -> list[Path]:
    import matplotlib.pyplot as plt
    written = []
    for path in (Path(out), Path(out).with_suffix(".pdf")):
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format=path.suffix.lstrip("."), dpi=120)
        written.append(path)
    plt.close(fig)
    return written


def _empty(ax_row, text: str) -> None:
    for a in ax_row:
        a.set_axis_off()
    ax_row[len(ax_row) // 2].text(0.5, 0.5, text, ha="center", va="center", fontsize=10,
                                  transform=ax_row[len(ax_row) // 2].transAxes)


# the second row of a dataset: the RecPO step diagnostics (r2ec.recpo.diagnostics), one panel each
# (title, y label, [(train_log key, line style)]); a run whose log predates a key leaves it out
DIAGNOSTIC_PANELS = (
    ("reward signal", "share of the step", [("flat_group_frac", "-"), ("cut_frac", "--")]),
    ("policy movement", "k3 KL / share of tokens", [("kl_ref", "-"), ("clip_frac", "--")]),
    ("policy entropy", "nats per reasoning token", [("entropy", "-")]),
)


def _step_panel(a, title: str, ylabel: str) -> bool:
    """Title, axes and grid of a per-step panel, its legend when it drew anything; whether it did."""
    a.set_title(title, fontsize=10)
    a.set_xlabel("step")
    a.set_ylabel(ylabel)
    a.grid(alpha=0.3)
    drew = bool(a.get_legend_handles_labels()[0])
    if drew:
        a.legend(fontsize=8)
    return drew


def dynamics_figure(runs: Path, datasets: list[str], out: Path, methods: tuple[str, ...] = DYNAMICS_RUNS) -> list[Path]:
    """RecPO training dynamics per dataset: train reward, valid N@10 and reasoning length vs step, and below them
    the step diagnostics: the share of groups whose G rewards are all equal (no signal) and of trajectories cut at
    ``recpo.max_reasoning_tokens``; the KL of the rollout policy to the base model and the clip fraction; the
    policy's token entropy.

    One line per run directory of ``methods`` that has a RecPO ``train_log.jsonl`` (rows with ``reward``),
    labelled with its advantage estimator, so GRPO (``r2ec``) and RLOO (``r2ec_rloo``) share the axes when both
    exist. Writes PNG and PDF; returns their paths."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = max(len(datasets), 1)
    fig, grid = plt.subplots(2 * n, 3, figsize=(14, 7.2 * n), squeeze=False)
    for r, ds in enumerate(datasets):
        ax, diag, drawn = grid[2 * r], grid[2 * r + 1], False
        for m in methods:
            d = Path(runs) / ds / m
            train = [t for t in read_jsonl(d / "train_log.jsonl") if "reward" in t]
            if not train:
                continue
            drawn = True
            adv = _advantage(d)
            label = f"{_label(m)} ({adv})" if adv else _label(m)
            ax[0].plot([t["step"] for t in train], [t["reward"] for t in train], lw=1, marker=_mark(train),
                       label=label)
            valid = read_jsonl(d / "valid_log.jsonl")
            ax[1].plot([v["step"] for v in valid], [v.get(SELECT, float("nan")) for v in valid], marker="o",
                       label=label)
            lens = [(t["step"], t["reasoning_len"]) for t in train if "reasoning_len" in t]
            if lens:
                ax[2].plot(*zip(*lens), lw=1, marker=_mark(lens), label=label)
            for a, (_, _, keys) in zip(diag, DIAGNOSTIC_PANELS):
                for key, ls in keys:
                    pts = [(t["step"], t[key]) for t in train if key in t]
                    if pts:
                        a.plot(*zip(*pts), lw=1, ls=ls, marker=_mark(pts),
                               label=f"{label}: {key}" if len(keys) > 1 else label)
        name = DATASET_NAMES.get(ds, ds)
        if not drawn:
            _empty(ax, f"{name}: no RecPO run ({', '.join(methods)}) with a train log under {runs}")
            for a in diag:
                a.set_axis_off()
            continue
        for a, (title, yl, _) in zip(diag, DIAGNOSTIC_PANELS):
            if not _step_panel(a, f"{name}: {title}", yl):
                a.text(0.5, 0.5, "not in the train logs", ha="center", va="center", transform=a.transAxes)
        for a, (title, yl) in zip(ax, [("train reward", "mean reward"), (f"valid {SELECT}", SELECT),
                                       ("reasoning length", "tokens")]):
            _step_panel(a, f"{name}: {title}", yl)
    fig.tight_layout()
    return _save(fig, out)


def sweep_points(runs: Path, dataset: str, key: str, values: tuple, split: str = "test") -> list[tuple[float, dict]]:
    """``(value, metrics)`` of every sweep run ``RUNS/<dataset>/r2ec@<key>=<value>`` that exists."""
    import json
    out = []
    for v in values:
        f = Path(runs) / dataset / sweep_dir(key, v) / "metrics.json"
        if f.exists():
            out.append((float(v), json.loads(f.read_text())[split]))
    return out


def sweep_figure(runs: Path, datasets: list[str], key: str, values: tuple, ks: tuple[int, ...],
                 out: Path) -> list[Path]:
    """Test N@K and H@K of R²ec against one RecPO parameter (``key`` in :data:`SWEEP_KEYS`), one row per
    dataset, from the sweep runs present (:func:`sweep_points`). Writes PNG and PDF; returns their paths."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if key not in SWEEP_KEYS:
        raise ValueError(f"unknown sweep {key!r}; known: {', '.join(SWEEP_KEYS)}")
    fig, axes = plt.subplots(len(datasets) or 1, 2, figsize=(10, 3.6 * max(len(datasets), 1)), squeeze=False)
    for r, ds in enumerate(datasets):
        pts = sweep_points(runs, ds, key, values)
        name = DATASET_NAMES.get(ds, ds)
        if not pts:
            _empty(axes[r], f"{name}: no {sweep_dir(key, '*')} run under {runs}")
            continue
        xs = [x for x, _ in pts]
        for a, kind in zip(axes[r], ("N", "H")):
            for k in ks:
                a.plot(xs, [m.get(f"{kind}@{k}", float("nan")) for _, m in pts], marker="o", label=f"{kind}@{k}")
            a.set_title(f"{name}: R²ec test {kind}@K vs {SWEEP_KEYS[key]}", fontsize=10)
            a.set_xlabel(SWEEP_KEYS[key])
            a.grid(alpha=0.3)
            a.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, out)


def write_plot_data(runs: Path, dataset: str, out_dir: Path, method: str = "r2ec") -> list[Path]:
    """CSV files for ``dvc plots show`` / ``dvc plots diff`` (one file per log, so experiments overlay):
    ``r2ec_train.csv`` (step, reward, reasoning_len, item_loss) and ``r2ec_valid.csv`` (step, N@10) of one run.
    Missing logs give header-only files, so the stage's outputs always exist."""
    import csv
    import io
    d = Path(runs) / dataset / method
    specs = {"r2ec_train.csv": (d / "train_log.jsonl", ["step", "reward", "reasoning_len", "item_loss"]),
             "r2ec_valid.csv": (d / "valid_log.jsonl", ["step", SELECT])}
    written = []
    for name, (log, cols) in specs.items():
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(cols)
        for row in read_jsonl(log):
            if all(c in row for c in cols):
                w.writerow([row[c] for c in cols])
        path = Path(out_dir) / name
        with atomic_path(path) as tmp:
            tmp.write_text(buf.getvalue())
        written.append(path)
    return written
