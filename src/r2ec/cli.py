"""One CLI for every stage: ``python -m r2ec <stage> [--params FILE ...] [-S key=value ...] <io flags>``.

Each sub-command resolves the params (files layered, later ones winning key by key, e.g. ``--params params.yaml
--params configs/profiles/paper.yaml``; then ``-S`` overrides; validated), then calls one library function.
Snakemake rules and DVC stages call exactly these commands; no stage logic lives here.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

from r2ec import config as C
from r2ec import methods

log = logging.getLogger("r2ec")


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--params", action="append", metavar="FILE",
                   help="params file (default: params.yaml); repeatable: later files are laid over earlier ones, "
                        "e.g. --params params.yaml --params configs/profiles/paper.yaml")
    p.add_argument("-S", "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a param, e.g. -S sasrec.lr=0.01 (repeatable; YAML values)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _params(args: argparse.Namespace) -> C.Params:
    return C.load(args.params or ["params.yaml"], args.overrides)


def _dataset_source(name: str) -> str:
    return "movielens-100k" if name == C.MOVIELENS else "amazon2023"


# --------------------------------------------------------------------------------------------------- stages

def cmd_download(args: argparse.Namespace) -> None:
    from r2ec.data import download
    p = _params(args)
    out = Path(args.out)
    if args.dataset == C.MOVIELENS:
        print(f"downloaded {download.download_recbole_wheel(p.data, out)}")
    else:
        if args.dataset not in C.AMAZON_CATEGORIES:
            raise C.ConfigError(f"--dataset: unknown Amazon 2023 category {args.dataset!r}")
        print("downloaded {} and {}".format(*download.download_amazon(args.dataset, p.data, out)))


def cmd_prepare(args: argparse.Namespace) -> None:
    from r2ec.data import preprocess
    p = _params(args)
    source = args.source or (_dataset_source(args.dataset) if args.dataset else None)
    if source is None:
        raise C.ConfigError("prepare: give --source (amazon2023 | movielens-100k) or --dataset")
    out = Path(args.out)
    if source == "movielens-100k":
        wheel = Path(args.wheel) if args.wheel else None
        if wheel is None:
            from r2ec.data import download
            wheel = download.download_recbole_wheel(p.data, Path(args.raw or out.parent / "_raw"))
        stats = preprocess.prepare_movielens(wheel, p.data, out)
    else:
        if args.ratings and args.meta:
            inter, meta = Path(args.ratings), Path(args.meta)
        elif args.raw and args.dataset:
            from r2ec.data import download
            inter, meta = download.download_amazon(args.dataset, p.data, Path(args.raw))
        else:
            raise C.ConfigError("prepare --source amazon2023 needs --ratings FILE --meta FILE "
                                "(or --dataset CATEGORY --raw DIR)")
        stats = preprocess.prepare_amazon(inter, meta, p.data, out)
    print(json.dumps(stats, indent=2))
    if table := preprocess.report_paper_comparison(args.dataset or out.name, stats):  # its counts beside ours
        print(table)


def _apply_threads(n: int) -> None:
    """``--threads N``: N torch threads (capped at the cores); 0 leaves torch's default."""
    if n:
        import torch
        torch.set_num_threads(min(n, os.cpu_count() or n))


def _launched_processes() -> int:
    """The number of processes of an ``accelerate launch`` / ``torchrun`` (1 for a plain run)."""
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


def cmd_train(args: argparse.Namespace) -> None:
    from r2ec.io import load_dataset, reset_run_if_params_changed
    p = _params(args)
    _apply_threads(args.threads)
    ds = load_dataset(args.data)
    run_dir = Path(args.out)
    m = methods.get(args.method)  # after the params: their plugins register methods
    # a checkpoint left by a run with other params must not be resumed into this one
    used = {k: C.to_dict(getattr(p, k)) for k in m.sections}
    fp = {"method": args.method, "data": str(ds.stats), "params": used}
    multi = _launched_processes() > 1
    if multi:  # accelerate launch: only the main process resets, the others wait for it
        from r2ec.train.engine import process_state
        st = process_state()
        if st.is_main_process:
            reset_run_if_params_changed(run_dir, fp)
        st.wait_for_everyone()
    else:
        reset_run_if_params_changed(run_dir, fp)
    t0 = time.time()
    metrics = methods.resolve(m.train)(args.method, ds, p, run_dir, Path(args.cache), not args.quiet)
    if multi:
        from r2ec.train.engine import shutdown
        shutdown()
    test = metrics.get("test", {})
    print(f"{args.method} on {ds.name}: " + " ".join(f"{k}={v:.4f}" for k, v in test.items()
                                                  if k.startswith(("H@", "N@"))) + f" ({time.time() - t0:.0f}s)")


def cmd_backbone(args: argparse.Namespace) -> None:
    from r2ec.io import write_json
    from r2ec.llm.backbone import backbone_cache_name, load_backbone, resolve_backbone
    p = _params(args)
    name = backbone_cache_name(p.llm.backbone)
    out = Path(args.cache) / "backbones" / name
    t0 = time.time()
    load_backbone(p.llm, out)  # GGUF: de-quantised once into `out`; HF ids / tiny-random need no copy
    # the stage's output folder always exists and says what it holds (the pipeline's dependency marker)
    write_json(out.parent / f"{name}.json", {"backbone": p.llm.backbone, "kind": resolve_backbone(
        p.llm.backbone)["kind"], "copy": str(out) if out.exists() else None})
    print(f"backbone {p.llm.backbone} ready ({time.time() - t0:.1f}s)")


def cmd_item_table(args: argparse.Namespace) -> None:
    from r2ec.io import load_dataset, write_json
    from r2ec.model.item_table import build_item_table
    p = _params(args)
    _apply_threads(args.threads)
    info = build_item_table(load_dataset(args.data), p, Path(args.cache), progress=not args.quiet)
    info.pop("seconds")  # keep the marker byte-identical across identical runs
    write_json(args.marker, info)
    print(f"item table of {info['dataset']} ready: {info['table']}")


def cmd_table1(args: argparse.Namespace) -> None:
    from r2ec.report.table1 import table1
    p = _params(args)
    table1(p, Path(args.runs), Path(args.out), Path(args.metrics) if args.metrics else None,
           Path(args.significance) if args.significance else None)
    print(f"wrote {args.out}")


def cmd_table2(args: argparse.Namespace) -> None:
    from r2ec.report.tables import table2
    table2(_params(args), Path(args.runs), Path(args.out))
    print(f"wrote {args.out}")


def cmd_table3(args: argparse.Namespace) -> None:
    from r2ec.report.tables import table3
    p = _params(args)
    table3(p, [Path(args.data_root) / d for d in p.datasets], Path(args.out))
    print(f"wrote {args.out}")


def cmd_figures(args: argparse.Namespace) -> None:
    from r2ec.report.figures import dynamics_figure, learning_figure, write_plot_data
    p = _params(args)
    variants = [m for m in C.R2EC_VARIANTS if m != "r2ec_zeroshot"]
    paths = learning_figure(Path(args.runs), list(p.datasets), variants, Path(args.out))
    if args.dynamics:
        paths += dynamics_figure(Path(args.runs), list(p.datasets), Path(args.dynamics))
    if args.plots:
        paths += write_plot_data(Path(args.runs), p.datasets[0], Path(args.plots))
    for path in paths:
        print(f"wrote {path}")


def cmd_sweep(args: argparse.Namespace) -> None:
    from r2ec.report.figures import sweep_figure
    p = _params(args)
    values = getattr(p.report, f"sweep_{args.key}")
    for path in sweep_figure(Path(args.runs), list(p.datasets), args.key, values, p.eval.ks, Path(args.out)):
        print(f"wrote {path}")


def cmd_latency(args: argparse.Namespace) -> None:
    from r2ec.io import load_dataset
    from r2ec.report.latency import measure, table4
    p = _params(args)
    _apply_threads(p.latency.threads)
    ds = load_dataset(Path(args.data_root) / (args.dataset or p.datasets[0]))
    result = measure(p, Path(args.runs), ds, Path(args.cache))
    table4(result, Path(args.out))
    print(f"wrote {args.out} ({result['hardware']})")


def cmd_report(args: argparse.Namespace) -> None:
    from r2ec.report.report import write_report
    p = _params(args)
    write_report(p, Path(args.results), Path(args.runs), Path(args.data_root), Path(args.out))
    print(f"wrote {args.out}")


def cmd_compare(args: argparse.Namespace) -> None:
    from r2ec.report.significance import paired_ranks, paired_tests
    _, a, b = paired_ranks(Path(args.a), Path(args.b), args.split)
    for metric in args.metric:
        r = paired_tests(a, b, metric, args.alternative)
        print(f"{metric} ({args.split}, n={r['n']}): a={r['mean_a']:.4f} b={r['mean_b']:.4f}  "
              f"H1 a {args.alternative} b: Wilcoxon p={r['wilcoxon_p']:.3g}, paired t p={r['ttest_p']:.3g}")


def cmd_recommend(args: argparse.Namespace) -> None:
    from r2ec.serve.recommend import recommend
    history = [t.strip() for t in args.history.split(";") if t.strip()]
    if not history:
        raise C.ConfigError("--history: give at least one title, separated by ';'")
    out = recommend(Path(args.run), history, k=args.k)
    print(("Profile" if "profile" in out else "Reasoning") + ":\n" + out["reasoning"].strip() + "\n")
    print(f"Top-{args.k}:")
    for i, (item_id, title, score) in enumerate(out["items"], 1):
        print(f"{i:>3}. [{item_id}] {title}  (score {score:.3f})")


def cmd_schema(args: argparse.Namespace) -> None:
    if args.docs:
        from r2ec.config.docs import write_markdown
        write_markdown(args.docs, C.read_raw(args.params))
        print(f"wrote {args.docs}")
        return
    C.write_json_schema(args.out)
    print(f"wrote {args.out}")


def cmd_check_params(args: argparse.Namespace) -> None:
    p = _params(args)
    print(json.dumps(C.to_dict(p), indent=2) if args.show else f"{' + '.join(args.params or ['params.yaml'])}: ok")


def cmd_profile(args: argparse.Namespace) -> None:
    from r2ec.config.profiles import command
    print(command(args.name, Path(args.root), write=args.write, docs=args.docs, check=args.check,
                  apply=args.apply, out=Path(args.out) if args.out else None), end="")


def cmd_dvc_yaml(args: argparse.Namespace) -> None:
    from r2ec.pipeline import dvc_yaml
    from r2ec.pipeline.dag import PipelineError
    try:
        if args.check:
            stale = dvc_yaml.stale(Path(args.root))
            if stale:
                raise C.ConfigError(f"{', '.join(map(str, stale))}: out of step with the Snakemake rules and "
                                    "params.yaml; run `python -m r2ec dvc-yaml`")
            print("dvc.yaml: in step with the Snakemake rules")
            return
        changed = dvc_yaml.write(Path(args.root), paper=args.paper)
    except PipelineError as e:
        raise C.ConfigError(str(e)) from e
    print("wrote " + ", ".join(map(str, changed)) if changed else "dvc.yaml: unchanged")


def cmd_dvc_sync(args: argparse.Namespace) -> None:
    from r2ec.pipeline.dag import PipelineError
    from r2ec.pipeline.sync import sync
    try:
        names = sync(Path(args.root))
    except PipelineError as e:
        raise C.ConfigError(str(e)) from e
    print(f"dvc-sync: recorded {len(names)} stage(s) built by Snakemake in dvc.lock")


def cmd_paper_smoke(args: argparse.Namespace) -> None:
    from r2ec.pipeline.smoke import run
    r = run(Path("."), Path(args.work), args.cores, Path(args.raw) if args.raw else None)
    print(f"paper-smoke: ok in {r['minutes']} min; {r['table']}: {r['groups']}; 2-process LLM logs: {r['llm_logs']}")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m r2ec", description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="stage", required=True)

    s = sub.add_parser("download", help="download one dataset's raw files (resumable, checksummed)")
    _common(s)
    s.add_argument("--dataset", required=True, help="movielens-100k or an Amazon 2023 category")
    s.add_argument("--out", required=True, help="raw data directory")
    s.set_defaults(func=cmd_download)

    s = sub.add_parser("prepare", help="filter, window, build samples, split -> prepared dataset")
    _common(s)
    s.add_argument("--source", choices=["amazon2023", "movielens-100k"])
    s.add_argument("--dataset", help="dataset name (implies --source)")
    s.add_argument("--ratings", help="Amazon interactions file (.csv.gz rating-only or .jsonl.gz reviews)")
    s.add_argument("--meta", help="Amazon meta_<CAT>.jsonl.gz")
    s.add_argument("--wheel", help="recbole wheel carrying MovieLens-100K")
    s.add_argument("--raw", help="raw download directory (downloads when files are missing)")
    s.add_argument("--out", required=True, help="prepared dataset directory")
    s.set_defaults(func=cmd_prepare)

    s = sub.add_parser("train", help="train one method and evaluate it with the shared evaluator")
    _common(s)
    s.add_argument("--method", required=True, help="a registered method (r2ec.methods), e.g. sasrec or r2ec")
    s.add_argument("--data", required=True, help="prepared dataset directory")
    s.add_argument("--out", required=True, help="run directory")
    s.add_argument("--cache", default="results/cache",
                   help="cache of converted backbones (LLM methods) and TIGER's item embeddings")
    s.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch default)")
    s.set_defaults(func=cmd_train)

    s = sub.add_parser("backbone", help="convert the LLM backbone once (e.g. de-quantise a GGUF) into the cache")
    _common(s)
    s.add_argument("--cache", default="results/cache", help="cache root: CACHE/backbones/<name>/")
    s.set_defaults(func=cmd_backbone)

    s = sub.add_parser("item-table", help="encode all items with the untrained backbone into the shared cache")
    _common(s)
    s.add_argument("--data", required=True, help="prepared dataset directory")
    s.add_argument("--cache", default="results/cache", help="cache root: CACHE/item_tables/")
    s.add_argument("--marker", required=True, help="JSON file describing the cached table (the stage's output)")
    s.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch default)")
    s.set_defaults(func=cmd_item_table)

    s = sub.add_parser("table1", help="LaTeX + Markdown Table 1 (H@K / N@K per dataset and method)")
    _common(s)
    s.add_argument("--runs", default="results/runs", help="runs root: RUNS/<dataset>/<method>/metrics.json "
                   "(the first of `seeds`; a further seed's runs: RUNS/../seeds/<seed>/runs)")
    s.add_argument("--out", required=True)
    s.add_argument("--metrics", help="also write the table's numbers as JSON (for dvc metrics)")
    s.add_argument("--significance", help="also write every paired test (R2ec vs the best baseline) as JSON")
    s.set_defaults(func=cmd_table1)

    s = sub.add_parser("table2", help="LaTeX + Markdown Table 2 (ablations of R2ec)")
    _common(s)
    s.add_argument("--runs", default="results/runs", help="runs root: RUNS/<dataset>/<method>/metrics.json")
    s.add_argument("--out", required=True, help=".tex path; the .md twin is written next to it")
    s.set_defaults(func=cmd_table2)

    s = sub.add_parser("table3", help="LaTeX Table 3 (dataset statistics)")
    _common(s)
    s.add_argument("--data-root", default="results/data", help="prepared datasets: ROOT/<dataset>/stats.json")
    s.add_argument("--out", required=True)
    s.set_defaults(func=cmd_table3)

    s = sub.add_parser("figures", help="R2ec learning curves (valid N@10, train reward/loss) as PNG + PDF")
    _common(s)
    s.add_argument("--runs", default="results/runs", help="runs root: RUNS/<dataset>/<method>/*_log.jsonl")
    s.add_argument("--out", required=True, help="PNG path; the PDF is written next to it")
    s.add_argument("--dynamics", help="also draw RecPO training dynamics (r2ec, r2ec_rloo) to this PNG (+ PDF)")
    s.add_argument("--plots", help="also write the first dataset's r2ec logs as CSV here (dvc plots)")
    s.set_defaults(func=cmd_figures)

    s = sub.add_parser("sweep", help="R2ec test metrics vs one RecPO parameter from RUNS/<ds>/r2ec@<key>=<value>")
    _common(s)
    s.add_argument("--key", required=True, choices=["beta", "temperature", "group_size"],
                   help="the swept recpo key; its values are report.sweep_<key>")
    s.add_argument("--runs", default="results/runs", help="runs root")
    s.add_argument("--out", required=True, help="PNG path; the PDF is written next to it")
    s.set_defaults(func=cmd_sweep)

    s = sub.add_parser("latency", help="Table 4: per-request inference latency at several batch sizes")
    _common(s)
    s.add_argument("--runs", default="results/runs", help="runs root")
    s.add_argument("--data-root", default="results/data", help="prepared datasets")
    s.add_argument("--dataset", help="dataset to time on (default: the first of `datasets`)")
    s.add_argument("--cache", default="results/cache", help="cache of converted backbones")
    s.add_argument("--out", required=True, help=".tex path; .md and .json are written next to it")
    s.set_defaults(func=cmd_latency)

    s = sub.add_parser("report", help="results/report.md: tables, significance, figures, example reasonings")
    _common(s)
    s.add_argument("--results", default="results", help="where the tables and figures/ are")
    s.add_argument("--runs", default="results/runs", help="runs root")
    s.add_argument("--data-root", default="results/data", help="prepared datasets")
    s.add_argument("--out", required=True, help="Markdown path")
    s.set_defaults(func=cmd_report)

    s = sub.add_parser("compare", help="paired Wilcoxon / t-tests of two runs on their shared samples")
    _common(s)
    s.add_argument("--a", required=True, help="run directory A")
    s.add_argument("--b", required=True, help="run directory B")
    s.add_argument("--split", default="test", choices=["valid", "test"])
    s.add_argument("--metric", nargs="+", default=["N@10", "H@10"], help="N@K / H@K")
    s.add_argument("--alternative", default="greater", choices=["greater", "less", "two-sided"],
                   help="H1 of the test (greater: A better than B)")
    s.set_defaults(func=cmd_compare)

    s = sub.add_parser("recommend", help="print reasoning and top-k items for a history of titles")
    s.add_argument("--run", required=True, help="an R2ec run directory")
    s.add_argument("--history", required=True, help="titles separated by ';'")
    s.add_argument("-k", type=int, default=10)
    s.set_defaults(func=cmd_recommend)

    s = sub.add_parser("schema", help="write the JSON schema of params.yaml (or, with --docs, its reference page)")
    s.add_argument("--out", default="workflow/schemas/params.schema.json")
    s.add_argument("--docs", metavar="PAGE", help="write the Markdown reference of every key instead, e.g. "
                   "docs/configuration.md (defaults from --params)")
    s.add_argument("--params", default="params.yaml", help="params file whose values are the documented defaults")
    s.set_defaults(func=cmd_schema)

    s = sub.add_parser("dvc-yaml", help="generate dvc.yaml (+ workflow/paper/dvc.yaml) from the Snakemake rules")
    s.add_argument("--root", default=".", help="project root (Snakefile, params.yaml)")
    s.add_argument("--check", action="store_true", help="fail if the files are out of step instead of writing")
    s.add_argument("--paper", action="store_true",
                   help="also write workflow/paper/dvc.yaml, the paper's long targets (`snakemake paper`)")
    s.set_defaults(func=cmd_dvc_yaml)

    s = sub.add_parser("dvc-sync", help="record in dvc.lock the stages Snakemake has built (Snakefile's onsuccess)")
    s.add_argument("--root", default=".", help="project root (a DVC project; anything else is left alone)")
    s.set_defaults(func=cmd_dvc_sync)

    s = sub.add_parser("profile", help="configs/profiles/NAME.yaml: print it, generate it (paper: from the "
                       "deviations registry, with docs/deviations.md) or apply it to params.yaml (for DVC)")
    s.add_argument("name", help="profile name, e.g. paper")
    s.add_argument("--root", default=".", help="project root (params.yaml, configs/profiles/, docs/)")
    for flag, text in (("--write", "write configs/profiles/paper.yaml"), ("--docs", "write docs/deviations.md"),
                       ("--check", "fail if those generated files are stale"),
                       ("--apply", "write params.yaml with the profile's values, comments kept")):
        s.add_argument(flag, action="store_true", help=text)
    s.add_argument("--out", help="with --apply: write here instead of ROOT/params.yaml")
    s.set_defaults(func=cmd_profile)

    s = sub.add_parser("paper-smoke", help="the paper profile at tiny scale in --work; checks its logs, Table 1")
    s.add_argument("--work", default="build/paper-smoke", help="work folder (emptied first)")
    s.add_argument("--cores", type=int, default=2)
    s.add_argument("--raw", help="an existing results/raw to reuse (skips the MovieLens-100K download)")
    s.set_defaults(func=cmd_paper_smoke)

    s = sub.add_parser("check-params", help="validate params (+ overrides); --show prints the resolved values")
    _common(s)
    s.add_argument("--show", action="store_true")
    s.set_defaults(func=cmd_check_params)
    return ap


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    args = build_parser().parse_args(argv)
    from r2ec.errors import UserError
    try:
        args.func(args)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0
