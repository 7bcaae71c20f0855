rule table1:
    input:
        expand("results/runs/{dataset}/{method}/metrics.json", dataset=config["datasets"],
               method=config["baselines"] + config["r2ec_variants"]),
    output:
        "results/table1.tex",
    params:
        S=sections("datasets", "eval", "report"),
    shell:
        "python -m r2ec table1 --runs results/runs --out {output} {params.S}"


rule table3:
    input:
        expand("results/data/{dataset}", dataset=config["datasets"]),
    output:
        "results/table3.tex",
    params:
        S=sections("datasets"),
    shell:
        "python -m r2ec table3 --data-root results/data --out {output} {params.S}"
