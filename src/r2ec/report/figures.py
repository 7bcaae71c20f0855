"""Figures from run logs (matplotlib, Agg): the R2ec learning curve.

``r2ec_learning.png`` (+ ``.pdf``), one row per dataset:
(a) valid N@10 vs training step and (b) vs training minutes (``valid_log.jsonl``: ``step``, ``N@10``,
``elapsed_s``) for every R2ec run that has a validation log; (c) the RecPO train reward (``reward``, mean over
the step's trajectories) and (d) the contrastive train loss (``item_loss`` of ``r2ec_no_reasoning``) vs step
(``train_log.jsonl``). A run whose reasoning variant was warm-started from the contrastive run is drawn from
its own step 0 (its first point is the warm start's quality).
"""

from __future__ import annotations

from pathlib import Path

from r2ec.io import atomic_path, read_jsonl
from r2ec.report.tables import DATASET_NAMES, METHOD_NAMES

SELECT = "N@10"


def _label(method: str) -> str:
    return METHOD_NAMES.get(method, method).replace(r"R$^2$ec", "R²ec").replace(r"$R_d$", "R_d") \
        .replace(r"$R_c$", "R_c").replace("\\ ", " ")


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
                ax[2].plot(*zip(*rew), lw=1, label=_label(m))
            loss = [(t["step"], t["item_loss"]) for t in train if "reward" not in t and "item_loss" in t]
            if loss:
                ax[3].plot(*zip(*loss), lw=1, label=_label(m))
        for a, (title, xl, yl) in zip(ax, [
                (f"{name}: valid {SELECT}", "step", SELECT), (f"{name}: valid {SELECT}", "training minutes", SELECT),
                (f"{name}: RecPO train reward", "step", "mean reward"),
                (f"{name}: contrastive train loss", "step", "InfoNCE loss")]):
            a.set_title(title, fontsize=10)
            a.set_xlabel(xl)
            a.set_ylabel(yl)
            a.grid(alpha=0.3)
            if a.get_legend_handles_labels()[0]:
                a.legend(fontsize=8)
    if rows:
        fig.tight_layout()
    out = Path(out)
    written = []
    for path in (out, out.with_suffix(".pdf")):
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format=path.suffix.lstrip("."), dpi=120)
        written.append(path)
    plt.close(fig)
    return written
