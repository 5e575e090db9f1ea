# The two commands: `make demo` and `make test`. Both create .venv when it is missing.
SHELL := /bin/bash
VENV ?= .venv
CORES ?= 2
# torch's build: auto (CUDA where nvidia-smi sees a GPU), cuda (for a cluster, whatever the
# login node has), cpu. `make venv TORCH_BUILD=cuda` on a login node without GPUs.
TORCH_BUILD ?= auto
# Threads per demo job. The demo's jobs are small and spend much of their time starting Python
# and loading torch on one core, so two one-thread jobs side by side beat one two-thread job
# (measured: 17.5 min with each job on both cores, see BENCHMARKS.md "make demo").
DEMO_MAX_THREADS ?= 1
BIN := $(abspath $(VENV))/bin
export PATH := $(BIN):$(PATH)

.PHONY: demo test venv lint hooks format dag clean-demo

venv:
	@VENV=$(VENV) TORCH_BUILD=$(TORCH_BUILD) scripts/setup_venv.sh

## Runs the whole demo: builds its checkpoints (a small GPT-2 and 3 DPO rounds), then every stage and the report.
demo: venv
	snakemake --configfile config/demo.yaml --cores $(CORES) --max-threads $(DEMO_MAX_THREADS) \
		--printshellcmds --show-failed-logs
	snakemake --configfile config/demo.yaml --report results/report/snakemake_report.html
	@echo "demo: open results/report/index.html"

## Runs the test suite (unit, workflow, local-SLURM integration).
test: venv
	pytest

lint: venv
	ruff check .
	ruff format --check .
	snakefmt --check .
	mypy
	snakemake --lint

## Installs the pre-commit hooks (.pre-commit-config.yaml: ruff, ruff-format, snakefmt, mypy),
## with pre-commit itself kept out of .venv (its virtualenv needs a packaging that snakemake refuses).
hooks: venv
	python3 -m pip install --user --quiet "pre-commit==4.7.0"
	python3 -m pre_commit install

format: venv
	ruff check --fix .
	ruff format .
	snakefmt .

dag: venv
	snakemake --configfile config/demo.yaml --rulegraph | dot -Tpng > results/rulegraph.png

clean-demo:
	rm -rf results/ logs/ benchmarks/

.PHONY: validate validate-ci validate-calibrate validate-potts validate-length

## Runs the validation suite: small studies with a known answer through the workflow, scored (VALIDATION.md).
validate: venv
	nice -n 5 python -m validation.run --suite full --cores $(CORES)

## The CI-sized validation: one planted-motif and one null study (a few minutes).
validate-ci: venv
	python -m validation.run --suite ci --cores $(CORES)

## The motif at homologous profile columns with the Potts stage (its own base of 1,000 steps; VALIDATION.md "Potts").
validate-potts: venv
	nice -n 5 python -m validation.run --suite potts --cores $(CORES)

## Held-out length shifts: the length-effect settings on studies they were not chosen on (VALIDATION.md).
validate-length: venv
	nice -n 5 python -m validation.run --suite length --cores $(CORES)

## What the suite's rounds learned, cheaply: train and sample only (validation/work/full/calibration.md).
validate-calibrate: venv
	nice -n 5 python -m validation.calibrate --suite full
