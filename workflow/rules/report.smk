rule table1:
    input:
        run_metrics(config["baselines"] + config["llm_baselines"] + r2ec_methods()),
    output:
        table="results/table1.tex",
        md="results/table1.md",
        metrics="results/metrics.json",
        significance="results/significance.json",
    params:
        # + every section of the deviations registry: the table marks rows run under a deviation from the paper
        S=sections("datasets", "eval", "report", "seeds", "backbones", "data", "llm", "lora", "recpo", "contrastive",
                   "readout", "sasrec", "gru4rec", "caser", "tiger", "bigrec", "langptune"),
    shell:
        "python -m r2ec table1 --runs results/runs --out {output.table} --metrics {output.metrics} "
        "--significance {output.significance} {params.S}"


rule learning_figure:
    input:
        expand("results/runs/{dataset}/{method}/metrics.json", dataset=config["datasets"], method=r2ec_methods()),
    output:
        png="results/figures/r2ec_learning.png",
        pdf="results/figures/r2ec_learning.pdf",
        dynamics="results/figures/r2ec_dynamics.png",
        dynamics_pdf="results/figures/r2ec_dynamics.pdf",
        plots=multiext("results/plots/r2ec_", "train.csv", "valid.csv"),
    params:
        S=sections("datasets"),
    shell:
        "python -m r2ec figures --runs results/runs --out {output.png} --dynamics {output.dynamics} "
        "--plots results/plots {params.S}"


rule table3:
    input:
        expand("results/data/{dataset}", dataset=config["datasets"]),
    output:
        "results/table3.tex",
    params:
        S=sections("datasets"),
    shell:
        "python -m r2ec table3 --data-root results/data --out {output} {params.S}"


# Table 2 (ablations): its own, longer target; it trains every variant of report.table2_methods
rule table2:
    input:
        expand("results/runs/{dataset}/{method}/metrics.json", dataset=config["datasets"],
               method=config["report"]["table2_methods"]),
    output:
        table="results/table2.tex",
        md="results/table2.md",
    params:
        S=sections("datasets", "eval", "report"),
    shell:
        "python -m r2ec table2 --runs results/runs --out {output.table} {params.S}"


# Table 4 (latency): its own target; times the methods of latency.methods on the first dataset
rule table4:
    input:
        expand("results/runs/{dataset}/{method}/metrics.json", dataset=config["datasets"][:1],
               method=config["latency"]["methods"]),
    output:
        table="results/table4.tex",
        md="results/table4.md",
        raw="results/table4.json",
    params:
        S=sections("seed", "eval", "llm", "lora", "recpo", "contrastive", "readout", "latency"),
    threads: workflow.cores
    shell:
        "python -m r2ec latency --runs results/runs --data-root results/data --cache results/cache "
        "--out {output.table} {params.S}"


# one sweep figure per RecPO key: `snakemake --cores 2 results/figures/sweep_beta.png` trains
# RUNS/<dataset>/r2ec@beta=<v> for every v in report.sweep_beta (rule train_r2ec_sweep), then draws them
rule sweep_figure:
    input:
        lambda wc: expand("results/runs/{dataset}/r2ec@{key}={value}/metrics.json", dataset=config["datasets"],
                          key=wc.key, value=config["report"][f"sweep_{wc.key}"]),
    output:
        png="results/figures/sweep_{key}.png",
        pdf="results/figures/sweep_{key}.pdf",
    wildcard_constraints:
        key="beta|temperature|group_size",
    params:
        S=sections("datasets", "eval", "report"),
    shell:
        "python -m r2ec sweep --key {wildcards.key} --runs results/runs --out {output.png} {params.S}"


# every figure of the default configuration (the sweeps are their own targets)
rule figures:
    input:
        rules.learning_figure.output,


rule report:
    input:
        rules.table1.output,
        rules.learning_figure.output,
        expand("results/runs/{dataset}/r2ec/metrics.json", dataset=config["datasets"])
        if "r2ec" in config["r2ec_variants"] else [],
    output:
        "results/report.md",
    params:
        S=sections("datasets", "eval", "report"),
    shell:
        "python -m r2ec report --results results --runs results/runs --data-root results/data "
        "--out {output} {params.S}"
