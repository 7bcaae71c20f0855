# every method `baselines` may list (r2ec.methods: the classic baselines, TIGER — its item-embedding cache lives
# under results/cache/tiger, the CLI's --cache —, the reference rows, and plugins of those kinds)
rule train_baseline:
    input:
        "results/data/{dataset}",
    output:
        metrics="results/{tree}runs/{dataset}/{method}/metrics.json",
        ranks="results/{tree}runs/{dataset}/{method}/ranks.parquet",
    wildcard_constraints:
        method=BASELINE_RE,
    params:
        S=lambda wc: seeded(sections(*methods.get(wc.method).sections), wc.tree, wc.method),
    # one torch thread per job: jobs run side by side on the cores Snakemake is given (more threads than
    # cores makes torch's OpenMP pool spin; measured 10x slower per step on a loaded 2-core machine)
    threads: 1
    log:
        "results/logs/train/{tree}{dataset}/{method}.log",
    shell:
        "python -m r2ec train --quiet --threads {threads} --method {wildcards.method} --data {input} "
        "--out results/{wildcards.tree}runs/{wildcards.dataset}/{wildcards.method} {params.S} 2> {log}"
