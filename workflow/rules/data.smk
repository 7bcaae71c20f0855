rule download:
    output:
        directory("results/raw/{dataset}"),
    params:
        S=sections("data"),
    log:
        "results/logs/download/{dataset}.log",
    shell:
        "python -m r2ec download --quiet --dataset {wildcards.dataset} --out {output} {params.S} 2> {log}"


rule prepare:
    input:
        "results/raw/{dataset}",
    output:
        directory("results/data/{dataset}"),
    params:
        S=sections("data"),
    log:
        "results/logs/prepare/{dataset}.log",
    shell:
        "python -m r2ec prepare --quiet --dataset {wildcards.dataset} --raw {input} --out {output} {params.S} 2> {log}"
