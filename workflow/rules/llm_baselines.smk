# BigRec and D3 (title-generation LLM baselines). The SFT is trained once, in the bigrec run (its best adapter
# in results/runs/{dataset}/bigrec/best); d3 only decodes that adapter, assisted by the pipeline's SASRec run
# when a d3.gamma is positive. The base-model title table is cached under results/cache/title_tables.


def d3_assistant_input(wc):
    """D3 waits for its text-free assistant's run only when it is used (a positive d3.gamma)."""
    d3 = config["d3"]
    if max(d3["gamma"]) <= 0:
        return []
    return [f"results/{wc.tree}runs/{wc.dataset}/{d3['assistant']}/metrics.json"]


rule train_bigrec:
    # bigrec -> d3 is the second-longest chain of the main job (after R2ec's): start it next
    priority: 20
    input:
        data="results/data/{dataset}",
        backbone="results/{bb}cache/backbones",
    output:
        metrics="results/{bb}{tree}runs/{dataset}/bigrec/metrics.json",
        ranks="results/{bb}{tree}runs/{dataset}/bigrec/ranks.parquet",
    params:
        run=LLM_RUN,
        threads=LLM_PROCESS_THREADS,
        S=lambda wc: backboned(seeded(sections(*methods.get("bigrec").sections), wc.tree, "bigrec"), wc.bb),
    # cores and processes: see train_r2ec
    threads: LLM_THREADS
    resources:
        gpu=LLM_GPUS,
    log:
        "results/logs/train/{bb}{tree}{dataset}/bigrec.log",
    shell:
        "{params.run} -m r2ec train --quiet --threads {params.threads} --method bigrec --data {input.data} "
        "--out results/{wildcards.bb}{wildcards.tree}runs/{wildcards.dataset}/bigrec "
        "--cache results/{wildcards.bb}cache {params.S} 2> {log}"


rule train_d3:
    # bigrec -> d3 is the second-longest chain of the main job (after R2ec's): start it next
    priority: 20
    input:
        data="results/data/{dataset}",
        backbone="results/{bb}cache/backbones",
        sft="results/{bb}{tree}runs/{dataset}/bigrec/metrics.json",
        assistant=d3_assistant_input,
    output:
        metrics="results/{bb}{tree}runs/{dataset}/d3/metrics.json",
        ranks="results/{bb}{tree}runs/{dataset}/d3/ranks.parquet",
    params:
        run=LLM_RUN,
        threads=LLM_PROCESS_THREADS,
        S=lambda wc: backboned(seeded(sections(*methods.get("d3").sections), wc.tree), wc.bb),
    threads: LLM_THREADS
    resources:
        gpu=LLM_GPUS,
    log:
        "results/logs/train/{bb}{tree}{dataset}/d3.log",
    shell:
        "{params.run} -m r2ec train --quiet --threads {params.threads} --method d3 --data {input.data} "
        "--out results/{wildcards.bb}{wildcards.tree}runs/{wildcards.dataset}/d3 "
        "--cache results/{wildcards.bb}cache {params.S} 2> {log}"
