rule table1:
    input:
        expand("results/runs/{dataset}/{method}/metrics.json", dataset=config["datasets"],
               method=config["baselines"] + config["r2ec_variants"]),
    output:
        table="results/table1.tex",
        metrics="results/metrics.json",
    params:
        S=sections("datasets", "eval", "report"),
    shell:
        "python -m r2ec table1 --runs results/runs --out {output.table} --metrics {output.metrics} {params.S}"


rule table3:
    input:
        expand("results/data/{dataset}", dataset=config["datasets"]),
    output:
        "results/table3.tex",
    params:
        S=sections("datasets"),
    shell:
        "python -m r2ec table3 --data-root results/data --out {output} {params.S}"
