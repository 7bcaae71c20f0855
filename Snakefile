# r2ec workflow: table of contents only. Every rule calls `python -m r2ec <stage>`; see workflow/rules/.
# Run: snakemake --cores 4 results/table1.tex   (params from params.yaml; override with --config key=value)
from snakemake.utils import min_version

min_version("8.0")

configfile: "params.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/baselines.smk"
include: "workflow/rules/r2ec.smk"
include: "workflow/rules/langptune.smk"
include: "workflow/rules/llm_baselines.smk"
include: "workflow/rules/report.smk"


rule all:
    input:
        "results/table1.tex",
        "results/table3.tex",
        "results/figures/r2ec_learning.png",
        "results/report.md",
