rule train_baseline:
    input:
        "results/data/{dataset}",
    output:
        metrics="results/runs/{dataset}/{method}/metrics.json",
        ranks="results/runs/{dataset}/{method}/ranks.parquet",
    wildcard_constraints:
        method="sasrec|gru4rec|caser",
    params:
        S=lambda wc: sections("seed", "eval", wc.method),
    threads: 2
    log:
        "results/logs/train/{dataset}/{method}.log",
    shell:
        "python -m r2ec train --quiet --threads {threads} --method {wildcards.method} --data {input} "
        "--out results/runs/{wildcards.dataset}/{wildcards.method} {params.S} 2> {log}"
