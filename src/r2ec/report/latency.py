"""Inference latency per request (paper Table 4): ``python -m r2ec latency``.

Every timed method answers the same requests: the first ``latency.queries`` samples of the shared test
evaluation subsample (:func:`r2ec.eval.evaluator.evaluation_samples`), served ``b`` at a time for each
``b`` in ``latency.batch_sizes``. A request is answered when its top-K list (K = max ``eval.ks``) over all
items exists, so a timed call is ``scorer(batch)`` (for R²ec: prompt, greedy reasoning of at most
``recpo.max_reasoning_tokens`` tokens, user vector, cosine against the item table) plus ``topk``. LLM methods
read the same params, so prompts (``llm.max_prompt_tokens``) and reasoning budgets are identical. The
per-request latency of a batch is its wall time divided by its size; the table reports mean ± std over the
batches, after ``latency.warmup`` untimed batches, in milliseconds, and states the hardware.

A method is timed when its registry entry (:mod:`r2ec.methods`) names a scorer loader:
``scorer(method, run_dir, ds, params, cache_dir)`` returns a :data:`r2ec.eval.evaluator.Scorer` of the trained run.
"""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from r2ec import methods
from r2ec.config import Params
from r2ec.errors import UserError
from r2ec.eval.evaluator import Scorer, evaluation_samples
from r2ec.io import Dataset, write_json, write_text

Factory = Callable[[str, Path, Dataset, Params, Path], Scorer]


def registered_timers() -> dict[str, Factory]:
    """The registered methods that have a scorer loader (the method registry's ``scorer`` entries), each
    imported only when called: timing two methods does not import every method's module."""
    def loader(entry: str) -> Factory:
        return lambda *args: methods.resolve(entry)(*args)
    return {name: loader(m.scorer) for name in methods.names() if (m := methods.get(name)).scorer}


def hardware() -> str:
    """One line naming the CPU (and GPU when used), the torch threads and the torch version."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = f", GPU {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ""
    return (f"{cpu} ({os.cpu_count()} logical cores){gpu}; torch {torch.__version__}, "
            f"{torch.get_num_threads()} threads")


def time_scorer(scorer: Scorer, samples, batch_size: int, k: int, warmup: int = 1) -> list[float]:
    """Per-request seconds of each batch of ``batch_size`` samples (the last batch may be smaller), after
    ``warmup`` untimed batches."""
    batches = [samples.slice(s, batch_size) for s in range(0, samples.height, batch_size)]
    for b in batches[:warmup]:
        with torch.no_grad():
            torch.topk(scorer(b), k, dim=1)
    out = []
    for b in batches:
        t0 = time.perf_counter()
        with torch.no_grad():
            torch.topk(scorer(b), k, dim=1)
        out.append((time.perf_counter() - t0) / b.height)
    return out


def measure(p: Params, runs: Path, dataset: Dataset, cache: Path,
            timers: dict[str, Factory] | None = None) -> dict:
    """Time every method of ``latency.methods`` that has a run on ``dataset`` (and a timer).

    Returns ``{"hardware", "dataset", "queries", "batch_sizes", "methods": {method: {batch: {mean_ms, std_ms,
    batches}}}}``."""
    timers = registered_timers() if timers is None else timers
    samples = evaluation_samples(dataset, "test", p.eval).head(p.latency.queries)
    k = min(max(p.eval.ks), dataset.n_items)
    out: dict = {"hardware": hardware(), "dataset": dataset.name, "queries": samples.height,
                 "batch_sizes": list(p.latency.batch_sizes), "methods": {}}
    for m in p.latency.methods:
        run_dir = Path(runs) / dataset.name / m
        if m not in timers or not (run_dir / "metrics.json").exists():
            continue
        scorer = timers[m](m, run_dir, dataset, p, Path(cache))
        out["methods"][m] = {}
        for b in p.latency.batch_sizes:
            per = np.asarray(time_scorer(scorer, samples, b, k, p.latency.warmup)) * 1000.0
            out["methods"][m][str(b)] = {"mean_ms": float(per.mean()), "std_ms": float(per.std(ddof=0)),
                                         "batches": int(per.size)}
    if not out["methods"]:
        raise UserError(f"latency: none of {list(p.latency.methods)} has a run under {Path(runs) / dataset.name} "
                        f"(timed methods: {', '.join(timers)})")
    return out


def table4(result: dict, out: Path) -> str:
    """Write Table 4 (``out`` .tex, the .md twin and the raw numbers as .json next to it)."""
    from r2ec.report.tables import dataset_label, method_label, plain_name
    bs = result["batch_sizes"]

    def cell(m: str, b: int) -> str:
        r = result["methods"][m].get(str(b))
        return "--" if r is None else f"{r['mean_ms']:.1f} ± {r['std_ms']:.1f}"

    hw = result["hardware"]
    caption = (f"Inference latency per request (ms, mean ± std over batches; batch time / batch size) on "
               f"{result['queries']} test requests of {{ds}}, top-K over all items. Hardware: {hw}.")
    tex_cap = caption.format(ds=dataset_label(result["dataset"])).replace("±", r"$\pm$").replace("%", r"\%")
    lines = ["% Generated by `python -m r2ec latency`; do not edit.", r"\begin{table}[t]", r"\centering",
             rf"\caption{{{tex_cap}}}", r"\label{tab:latency}", r"\begin{tabular}{l" + "c" * len(bs) + "}",
             r"\toprule", "Method & " + " & ".join(f"batch {b}" for b in bs) + r" \\", r"\midrule"]
    for m in result["methods"]:
        lines.append(f"{method_label(m)} & " + " & ".join(cell(m, b).replace("±", r"$\pm$") for b in bs)
                     + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}", ""]
    text = "\n".join(lines)
    md = [f"**Table 4.** {caption.format(ds=result['dataset'])}", "",
          "| Method | " + " | ".join(f"batch {b}" for b in bs) + " |", "|---|" + "---:|" * len(bs)]
    md += [f"| {plain_name(m)} | " + " | ".join(cell(m, b) for b in bs) + " |" for m in result["methods"]]
    write_text(out, text)
    write_text(Path(out).with_suffix(".md"), "\n".join(md) + "\n")
    write_json(Path(out).with_suffix(".json"), result)
    return text
