rule table1:
    input:
        expand("results/runs/{dataset}/{method}/metrics.json", dataset=config["datasets"],
               method=config["baselines"] + r2ec_methods()),
    output:
        table="results/table1.tex",
        metrics="results/metrics.json",
    params:
        S=sections("datasets", "eval", "report"),
    shell:
        "python -m r2ec table1 --runs results/runs --out {output.table} --metrics {output.metrics} {params.S}"


rule learning_figure:
    input:
        expand("results/runs/{dataset}/{method}/metrics.json", dataset=config["datasets"], method=r2ec_methods()),
    output:
        png="results/figures/r2ec_learning.png",
        pdf="results/figures/r2ec_learning.pdf",
    params:
        S=sections("datasets"),
    shell:
        "python -m r2ec figures --runs results/runs --out {output.png} {params.S}"


rule table3:
    input:
        expand("results/data/{dataset}", dataset=config["datasets"]),
    output:
        "results/table3.tex",
    params:
        S=sections("datasets"),
    shell:
        "python -m r2ec table3 --data-root results/data --out {output} {params.S}"
