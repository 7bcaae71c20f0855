# Shared wiring: validate the config and hand each rule exactly the params sections it uses.
import json
import shlex
from argparse import Namespace
from pathlib import Path

from r2ec import methods
from r2ec.config import from_dict, to_dict
from r2ec.config.backbones import backbone_groups, uses_backbone
from r2ec.pipeline.launch import job_threads, launcher

# `--config 'seeds=[2025,7]'` arrives as strings (Snakemake reads list values with YAML's base loader)
if isinstance(config.get("seeds"), list):
    config["seeds"] = [int(s) if isinstance(s, str) and s.isdigit() else s for s in config["seeds"]]
# the CLI's own strict check (unknown keys, types, ranges), which also imports the params' plugins, so that their
# methods are in the registry the rules read
PARAMS = from_dict(config, "params (Snakemake config)")

# an LLM training job (R2ec variants, BigRec / D3, LangPTune) starts under `launch`: one python process, or N
# processes under torchrun / accelerate launch; it takes processes x threads of Snakemake's cores and asks a
# cluster executor for `launch.gpus` GPUs (resource gpu)
LLM_RUN = launcher(PARAMS.launch)
LLM_THREADS = job_threads(PARAMS.launch)
LLM_PROCESS_THREADS = PARAMS.launch.threads
LLM_GPUS = PARAMS.launch.gpus

# `seeds`: the first seed's runs are results/runs/<dataset>/<method> (the sections' own seed keys), each further
# seed s has its own tree results/seeds/<s>/runs/<dataset>/<method>; the training rules' {tree} wildcard is ''
# or 'seeds/<s>/' (a prefix, so the first tree's paths and logs are those of a single-seed job)
wildcard_constraints:
    tree="(seeds/[0-9]+/)?",
    bb="(backbones/[^/]+/)?",

# `backbones` (r2ec.config.backbones): the LLM methods' runs of llm.backbone are the trees above, each other backbone
# has its own results/backbones/<tag>/ (runs, seeds/<s>/runs, cache); the LLM rules' {bb} wildcard is that prefix
BACKBONE_SPEC = {b.prefix: b.spec for b in backbone_groups(PARAMS)}

# the params sections that hold a training seed (a further seed's run overrides them, and the global `seed`)
SEEDED = {n for n, v in to_dict(PARAMS).items() if isinstance(v, dict) and "seed" in v}
# what the generic training rule trains: the methods `baselines` may list, plugins included
BASELINE_RE = "|".join(methods.names("reference", "classic", "generative"))


# after a Snakemake run, record its finished jobs in dvc.lock (a no-op outside a DVC project and inside a DVC
# stage, which runs its job through Snakemake with R2EC_DVC_SYNC=0; never fails the run)
# (braces doubled: shell() formats the string)
DVC_SYNC = ('[ "${{R2EC_DVC_SYNC:-1}}" = 0 ] || python -m r2ec dvc-sync --root . >&2 '
            "|| echo 'dvc-sync failed: dvc.lock not updated' >&2")


def seed_trees():
    """'' (results/runs) for the first of `seeds`, 'seeds/<s>/' for each further seed s."""
    return [""] + [f"seeds/{s}/" for s in config.get("seeds", [])[1:]]


def seeded(args, tree, *names):
    """`args` plus, in a further seed's tree, `-S seed=<s>` and `-S <name>.seed=<s>` for each of `names` that has a
    seed (after the sections, so they win); the first tree's args are returned unchanged. eval.seed is never
    overridden: every seed's runs are evaluated on the same test subsample (paired across seeds)."""
    if not tree:
        return args
    s = int(tree.split("/")[1])
    return " ".join([args, f"-S seed={s}"] + [f"-S {n}.seed={s}" for n in names if n in SEEDED and n != "eval"])


def backboned(args, bb):
    """`args` plus, in another backbone's tree, `-S llm.backbone=<spec>` (after the sections, so it wins)."""
    return args if not bb else f"{args} -S {shlex.quote('llm.backbone=' + BACKBONE_SPEC[bb])}"


def run_metrics(methods):
    """The metrics.json of every run of `methods` on every dataset: each seed's tree and, for a method that reads a
    backbone, each backbone's."""
    return [f"results/{b}{t}runs/{d}/{m}/metrics.json" for m in methods for d in config["datasets"]
            for b in (BACKBONE_SPEC if uses_backbone(m) else [""]) for t in seed_trees()]


def r2ec_methods():
    """The R2ec runs of the tables: the configured variants plus the contrastive run they may warm-start from."""
    return list(config["r2ec_variants"]) + (["r2ec_no_reasoning"] if config["r2ec_variants"] else [])


def warm_start_input(wc):
    """A reasoning variant waits for the run it warm-starts from (recpo.warm_start), the others for nothing."""
    src = config["recpo"]["warm_start"]
    if not src or wc.method in ("r2ec_zeroshot", src):
        return []
    return [f"results/{wc.bb}{wc.tree}runs/{wc.dataset}/{src}/metrics.json"]


def sections(*names):
    """`-S name=<json>` for each params section a rule uses: Snakemake re-runs a rule when one changes, and the
    CLI sees --config overrides (it is given the values instead of re-reading the params file)."""
    return " ".join("-S " + shlex.quote(f"{n}={json.dumps(config[n], separators=(',', ':'))}") for n in names)
