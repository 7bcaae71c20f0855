# r2ec workflow: table of contents only. Every rule calls `python -m r2ec <stage>`; see workflow/rules/.
# The one DAG of the pipeline: dvc.yaml and workflow/paper/dvc.yaml are generated from these rules
# (`python -m r2ec dvc-yaml`). Run: snakemake --cores 4 (rule all = `make table1` = `dvc repro`);
# snakemake --cores 4 paper (= `make paper` = `dvc repro workflow/paper/dvc.yaml`).
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


# the default target: every Table 1 method, Table 3, the learning figure, the report
rule all:
    input:
        "results/table1.tex",
        "results/table3.tex",
        "results/figures/r2ec_learning.png",
        "results/report.md",


# the paper's long targets: Table 2 (trains its ablation variants), Table 4 (latency), the RecPO sweeps
rule paper:
    input:
        rules.all.input,
        "results/table2.tex",
        "results/table4.tex",
        expand("results/figures/sweep_{key}.png", key=["beta", "temperature", "group_size"]),


# DVC's lock records what Snakemake built, so `dvc exp run` after a Snakemake run re-runs only what changed
onsuccess:
    shell(DVC_SYNC)


onerror:
    shell(DVC_SYNC)
