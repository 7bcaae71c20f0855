# the R2ec chain (item table -> r2ec_no_reasoning's readout fit -> r2ec's distillation + RecPO; 52.5 job-min at
# one thread in the measured main job of a34c164) is the longest of the default job: priority 30 starts it before
# BigRec -> D3 (20) and the classic baselines
rule backbone:
    priority: 30
    output:
        directory("results/{bb}cache/backbones"),
    params:
        S=lambda wc: backboned(sections("llm"), wc.bb),
    log:
        "results/logs/{bb}backbone.log",
    shell:
        "python -m r2ec backbone --quiet --cache results/{wildcards.bb}cache {params.S} 2> {log}"


rule item_table:
    priority: 30
    input:
        data="results/data/{dataset}",
        backbone="results/{bb}cache/backbones",
    output:
        "results/{bb}cache/item_tables/{dataset}.json",
    params:
        S=lambda wc: backboned(sections("llm", "lora"), wc.bb),  # the host checks LoRA against the model's layers
    threads: 1
    log:
        "results/logs/item_table/{bb}{dataset}.log",
    shell:
        "python -m r2ec item-table --quiet --threads {threads} --data {input.data} "
        "--cache results/{wildcards.bb}cache --marker {output} {params.S} 2> {log}"


rule train_r2ec:
    priority: 30
    input:
        data="results/data/{dataset}",
        backbone="results/{bb}cache/backbones",
        item_table="results/{bb}cache/item_tables/{dataset}.json",
        warm_start=warm_start_input,
    output:
        metrics="results/{bb}{tree}runs/{dataset}/{method}/metrics.json",
        ranks="results/{bb}{tree}runs/{dataset}/{method}/ranks.parquet",
    wildcard_constraints:
        method="r2ec[a-z_]*",
    params:
        run=LLM_RUN,
        threads=LLM_PROCESS_THREADS,
        S=lambda wc: backboned(seeded(sections(*methods.get(wc.method).sections), wc.tree, "recpo", "readout"),
                               wc.bb),
    # launch.processes x launch.threads cores (default 1 x 1: jobs run side by side on the cores Snakemake is
    # given; more threads than cores makes torch's OpenMP pool spin, measured 10x slower per step on 2 cores)
    threads: LLM_THREADS
    resources:
        gpu=LLM_GPUS,
    log:
        "results/logs/train/{bb}{tree}{dataset}/{method}.log",
    shell:
        "{params.run} -m r2ec train --quiet --threads {params.threads} --method {wildcards.method} --data {input.data} "
        "--out results/{wildcards.bb}{wildcards.tree}runs/{wildcards.dataset}/{wildcards.method} "
        "--cache results/{wildcards.bb}cache {params.S} 2> {log}"


# one point of a RecPO sweep (rule sweep_figure): r2ec trained with recpo.<key>=<value>, next to the r2ec run
rule train_r2ec_sweep:
    input:
        data="results/data/{dataset}",
        backbone="results/cache/backbones",
        item_table="results/cache/item_tables/{dataset}.json",
        warm_start=lambda wc: warm_start_input(Namespace(bb="", tree="", dataset=wc.dataset, method="r2ec")),
    output:
        metrics="results/runs/{dataset}/r2ec@{key}={value}/metrics.json",
        ranks="results/runs/{dataset}/r2ec@{key}={value}/ranks.parquet",
    wildcard_constraints:
        key="beta|temperature|group_size",
        value="[0-9.]+",
    params:
        run=LLM_RUN,
        threads=LLM_PROCESS_THREADS,
        S=sections(*methods.get("r2ec").sections),
    threads: LLM_THREADS
    resources:
        gpu=LLM_GPUS,
    log:
        "results/logs/train/{dataset}/r2ec@{key}={value}.log",
    shell:
        "{params.run} -m r2ec train --quiet --threads {params.threads} --method r2ec --data {input.data} "
        "--out results/runs/{wildcards.dataset}/r2ec@{wildcards.key}={wildcards.value} --cache results/cache "
        "{params.S} -S recpo.{wildcards.key}={wildcards.value} 2> {log}"
