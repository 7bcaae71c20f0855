# the LLM chain is the critical path of the default job: schedule it before the classic baselines
rule backbone:
    priority: 10
    output:
        directory("results/cache/backbones"),
    params:
        S=sections("llm"),
    log:
        "results/logs/backbone.log",
    shell:
        "python -m r2ec backbone --quiet --cache results/cache {params.S} 2> {log}"


rule item_table:
    priority: 10
    input:
        data="results/data/{dataset}",
        backbone="results/cache/backbones",
    output:
        "results/cache/item_tables/{dataset}.json",
    params:
        S=sections("llm"),
    threads: 1
    log:
        "results/logs/item_table/{dataset}.log",
    shell:
        "python -m r2ec item-table --quiet --threads {threads} --data {input.data} --cache results/cache "
        "--marker {output} {params.S} 2> {log}"


rule train_r2ec:
    priority: 10
    input:
        data="results/data/{dataset}",
        backbone="results/cache/backbones",
        item_table="results/cache/item_tables/{dataset}.json",
        warm_start=warm_start_input,
    output:
        metrics="results/runs/{dataset}/{method}/metrics.json",
        ranks="results/runs/{dataset}/{method}/ranks.parquet",
    wildcard_constraints:
        method="r2ec[a-z_]*",
    params:
        S=sections("seed", "eval", "llm", "lora", "recpo", "contrastive"),
    # one torch thread per job: jobs run side by side on the cores Snakemake is given (more threads than
    # cores makes torch's OpenMP pool spin; measured 10x slower per step on a loaded 2-core machine)
    threads: 1
    log:
        "results/logs/train/{dataset}/{method}.log",
    shell:
        "python -m r2ec train --quiet --threads {threads} --method {wildcards.method} --data {input.data} "
        "--out results/runs/{wildcards.dataset}/{wildcards.method} --cache results/cache {params.S} 2> {log}"
