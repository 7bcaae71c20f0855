"""The workflow's front ends: the Snakemake rules are the one DAG; DVC's files and lock are derived from it."""
