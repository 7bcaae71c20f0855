"""What the benchmark scripts share: the params / data / cache arguments and the record of the machine."""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import sys

import torch


def base_parser(doc: str) -> argparse.ArgumentParser:
    """``--params`` (repeatable: params.yaml, then profiles; later files win), ``-S KEY=VALUE``, ``--data``,
    ``--cache``; the description is the first line of ``doc``."""
    ap = argparse.ArgumentParser(description=doc.split("\n")[0])
    ap.add_argument("--params", action="append", default=[], help="params file(s) (default params.yaml)")
    ap.add_argument("-S", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--data", default="results/data/movielens-100k")
    ap.add_argument("--cache", default="results/cache", help="cache folder ('' for none)")
    return ap


def cache_of(a: argparse.Namespace):
    """``--cache`` as a folder, None for ``''`` (``Path('')`` is the working directory: caches would land there)."""
    from pathlib import Path
    return Path(a.cache) if a.cache else None


def load_params(a: argparse.Namespace, extra: list[str] = ()):
    from r2ec import config as C
    return C.load(a.params or ["params.yaml"], list(a.overrides) + list(extra))


def command(argv: list[str] | None) -> str:
    return " ".join(shlex.quote(x) for x in [sys.argv[0]] + (argv if argv is not None else sys.argv[1:]))


def machine() -> dict:
    """The device the numbers were taken on: the GPU's name and memory, or the CPU's, with the core count."""
    out = {"hostname": platform.node(), "platform": platform.platform(), "cpu_count": os.cpu_count(),
           "torch": torch.__version__}
    if torch.cuda.is_available():
        prop = torch.cuda.get_device_properties(0)
        out |= {"kind": "gpu", "gpu": prop.name, "gpu_memory_gib": round(prop.total_memory / 2**30, 1),
                "gpus": torch.cuda.device_count()}
    else:
        out |= {"kind": "cpu", "cpu": platform.processor() or platform.machine()}
    return out


def figure_axes(figsize: tuple[float, float]):
    """``(fig, ax)`` of a headless matplotlib figure."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt.subplots(figsize=figsize)


def save_png(fig, out) -> str:
    """Save ``fig`` as the PNG beside the JSON ``out`` (same stem) and return its path."""
    fig.tight_layout()
    png = out.with_suffix(".png")
    fig.savefig(png, dpi=130)
    return str(png)
