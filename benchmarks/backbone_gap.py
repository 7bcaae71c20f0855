"""R2ec and R2ec w/o reasoning on several backbones side by side (a benchmark over finished runs, not a test).

The paper's claim is that reasoning, trained by RecPO, lifts a recommender above the same model without
reasoning; at CPU scale the default 135M backbone does not show it. This reads, for every ``--tree TAG=DIR`` (a
runs folder holding ``r2ec`` and ``r2ec_no_reasoning`` trained with one ``llm.backbone``, e.g. the default job's
``results/runs/movielens-100k`` and ``results/backbones/<tag>/runs/movielens-100k``), the backbone's size, both
rows' test metrics, the gap between them with the paired one-sided Wilcoxon p for "w/o reasoning better", both
rows against ``--reference``'s Popularity, and what RecPO's steps did (valid N@10 at step 0 and at the selected
step, from ``valid_log.jsonl``). Each method is also tested across backbones (every later tree against the
first). Example (SmolLM2 from the default job, Gemma-3-270M trained with the same params)::

    python benchmarks/backbone_gap.py --tree smollm2=results/runs/movielens-100k \\
        --tree gemma3=results/backbones/gemma-3-270m-q4_k_m/runs/movielens-100k

Writes ``--out`` (default ``benchmarks/results/backbone_gap-<machine>-<date>.json``) and a PNG of test N@10 by
backbone next to it. Every run must have been evaluated on the same test samples (``eval.*`` unchanged).
"""

from __future__ import annotations

import datetime
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import command, figure_axes, machine, save_png  # noqa: E402

METHODS = ("r2ec_no_reasoning", "r2ec")
METRICS = ("H@10", "N@10", "H@20", "N@20", "n_samples")


def backbone_params(spec: str) -> int:
    """The backbone's parameter count, from its config alone (a meta-device model: no weights read)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from r2ec.llm.backbone import resolve_backbone
    src = resolve_backbone(spec)
    if src["kind"] == "gguf":
        cfg = AutoConfig.from_pretrained(src["dir"], gguf_file=src["file"])
    elif src["kind"] == "hf":
        cfg = AutoConfig.from_pretrained(src["name"])
    else:
        from r2ec.llm.tiny import TINY_BACKBONES
        return sum(p.numel() for p in TINY_BACKBONES[src["name"]](seed=0)[0].parameters())
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(cfg)
    # tied input/output embeddings are one tensor: count each parameter once
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def recpo_steps(run: Path) -> dict:
    """Valid N@10 at step 0 and at the step the run selected, the number of steps trained, and how far the policy
    moved (mean and largest ``kl_ref``, the sampled tokens' KL to the reference policy), from the run's logs."""
    valid = _jsonl(run / "valid_log.jsonl")
    kl = [r["kl_ref"] for r in _jsonl(run / "train_log.jsonl") if "kl_ref" in r]
    best = json.loads((run / "config.json").read_text())["run"]["best_step"]
    at = {r["step"]: r for r in valid}
    return {"selected_step": best, "last_step": max(at), "valid_samples": valid[0].get("n_samples"),
            "valid_N@10_step0": at[0]["N@10"] if 0 in at else None, "valid_N@10_selected": at[best]["N@10"],
            "valid_N@10_last": at[max(at)]["N@10"], "kl_ref_mean": sum(kl) / len(kl) if kl else None,
            "kl_ref_max": max(kl) if kl else None}


def tree_row(tag: str, runs: Path, reference: Path) -> dict:
    from r2ec.report.significance import paired_ranks, paired_tests
    missing = [m for m in METHODS if not (runs / m / "ranks.parquet").exists()]
    if missing:
        raise SystemExit(f"{runs}: no finished {', '.join(missing)} run (--tree {tag}={runs})")
    spec = json.loads((runs / "r2ec" / "config.json").read_text())["llm"]["backbone"]
    row = {"tag": tag, "runs": str(runs), "backbone": spec, "params": backbone_params(spec), "test": {}}
    for m in METHODS:
        test = json.loads((runs / m / "metrics.json").read_text())["test"]
        row["test"][m] = {k: test[k] for k in METRICS if k in test}
    _, with_r, without = paired_ranks(runs / "r2ec", runs / "r2ec_no_reasoning")
    row["gap_N@10"] = row["test"]["r2ec"]["N@10"] - row["test"]["r2ec_no_reasoning"]["N@10"]
    row["p_no_reasoning_better"] = paired_tests(without, with_r, "N@10", "greater")["wilcoxon_p"]
    row["p_r2ec_better"] = paired_tests(with_r, without, "N@10", "greater")["wilcoxon_p"]
    for m in METHODS:
        _, ranks, pop = paired_ranks(runs / m, reference / "popularity")
        row[f"p_{m}_above_popularity"] = paired_tests(ranks, pop, "N@10", "greater")["wilcoxon_p"]
    row["recpo"] = recpo_steps(runs / "r2ec")
    return row


def across(rows: list[dict]) -> list[dict]:
    """Every later tree's runs against the first tree's, per method (two-sided paired Wilcoxon on N@10)."""
    from r2ec.report.significance import paired_ranks, paired_tests
    out = []
    for r in rows[1:]:
        for m in METHODS:
            _, a, b = paired_ranks(Path(r["runs"]) / m, Path(rows[0]["runs"]) / m)
            t = paired_tests(a, b, "N@10", "two-sided")
            out.append({"method": m, "a": r["tag"], "b": rows[0]["tag"], "mean_a": t["mean_a"],
                        "mean_b": t["mean_b"], "wilcoxon_p": t["wilcoxon_p"]})
    return out


def figure(res: dict, out: Path) -> str:
    import numpy as np
    rows = res["backbones"]
    x = np.arange(len(rows))
    fig, ax = figure_axes((5.5, 3.6))
    for i, (m, label) in enumerate((("r2ec_no_reasoning", "R²ec w/o reasoning"), ("r2ec", "R²ec"))):
        ax.bar(x + (i - 0.5) * 0.38, [r["test"][m]["N@10"] for r in rows], width=0.38, label=label)
    ax.axhline(res["popularity"]["N@10"], ls=":", c="grey", lw=1, label="Popularity")
    ax.set_xticks(x, [f"{r['tag']}\n{r['params'] / 1e6:.0f}M" for r in rows])
    ax.set_ylabel(f"test N@10 ({res['popularity']['n_samples']} samples)")
    top = max(r["test"][m]["N@10"] for r in rows for m in METHODS)
    ax.set_ylim(0, top * 1.3)  # room for the legend above the bars
    ax.legend(fontsize=7, loc="upper left", ncol=3)
    return save_png(fig, out)


def main(argv: list[str] | None = None) -> dict:
    import argparse
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tree", action="append", required=True, metavar="TAG=DIR",
                    help="a backbone's runs folder (r2ec, r2ec_no_reasoning); repeat, the first is the baseline")
    ap.add_argument("--reference", type=Path, help="the runs folder with popularity (default: the first tree)")
    ap.add_argument("--out", type=Path)
    a = ap.parse_args(argv)
    trees = []
    for t in a.tree:
        tag, sep, d = t.partition("=")
        if not sep or not tag or not d:
            raise SystemExit(f"--tree {t!r}: expected TAG=DIR")
        trees.append((tag, Path(d)))
    reference = a.reference or trees[0][1]
    if not (reference / "popularity" / "metrics.json").exists():
        raise SystemExit(f"{reference}: no finished popularity run (--reference)")
    rows = [tree_row(tag, d, reference) for tag, d in trees]
    pop = json.loads((reference / "popularity" / "metrics.json").read_text())["test"]
    res = {"benchmark": "backbone_gap", "command": command(argv), "date": datetime.date.today().isoformat(),
           "machine": machine(), "popularity": {k: pop[k] for k in METRICS if k in pop}, "backbones": rows,
           "across_backbones": across(rows)}
    out = a.out or Path("benchmarks/results") / f"backbone_gap-{res['machine']['kind']}-{res['date']}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2) + "\n")
    res["figure"] = str(figure(res, out))
    for r in rows:
        print(f"{r['tag']} ({r['params'] / 1e6:.0f}M): w/o reasoning N@10 "
              f"{r['test']['r2ec_no_reasoning']['N@10']:.4f}, R2ec {r['test']['r2ec']['N@10']:.4f} "
              f"(gap {r['gap_N@10']:+.4f}; w/o better p = {r['p_no_reasoning_better']:.3g}); "
              f"RecPO selected step {r['recpo']['selected_step']} of {r['recpo']['last_step']}", flush=True)
    print(f"wrote {out} and {res['figure']}")
    return res


if __name__ == "__main__":
    main()
