# Shared wiring: validate the config and hand each rule exactly the params sections it uses.
import json
import shlex
from argparse import Namespace

from snakemake.utils import validate

validate(config, "../schemas/params.schema.json")


def r2ec_methods():
    """The R2ec runs of the tables: the configured variants plus the contrastive run they may warm-start from."""
    return list(config["r2ec_variants"]) + (["r2ec_no_reasoning"] if config["r2ec_variants"] else [])


def warm_start_input(wc):
    """A reasoning variant waits for the run it warm-starts from (recpo.warm_start), the others for nothing."""
    src = config["recpo"]["warm_start"]
    if not src or wc.method in ("r2ec_zeroshot", src):
        return []
    return [f"results/runs/{wc.dataset}/{src}/metrics.json"]


def sections(*names):
    """`-S name=<json>` for each params section a rule uses: Snakemake re-runs a rule when one changes, and the
    CLI sees --config overrides (it is given the values instead of re-reading the params file)."""
    return " ".join("-S " + shlex.quote(f"{n}={json.dumps(config[n], separators=(',', ':'))}") for n in names)
