# Shared wiring: validate the config and hand each rule exactly the params sections it uses.
import json
import shlex

from snakemake.utils import validate

validate(config, "../schemas/params.schema.json")


def sections(*names):
    """`-S name=<json>` for each params section a rule uses: Snakemake re-runs a rule when one changes, and the
    CLI sees --config overrides (it is given the values instead of re-reading the params file)."""
    return " ".join("-S " + shlex.quote(f"{n}={json.dumps(config[n], separators=(',', ':'))}") for n in names)
