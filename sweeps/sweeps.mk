# Studies: one YAML per study in sweeps/ (selected as `python -m src.run -m +sweep=<study>`), each run
# followed by its report. Included by the Makefile after PY and ARGS are defined:
#   make studies                                     # the studies and the question each answers
#   make sweep-ranks                                 # tiny model on CPU, minutes
#   make sweep-ranks ARGS="model=gpt2-medium data=alpaca"   # the real study; ARGS pass through to Hydra
#   make sweep-ranks DIR=multirun/ranks/r16          # choose the sweep folder (default multirun/<study>/<time>)
#   make sweep-ranks LAUNCHER=ray                    # the cells on every GPU here (Ray); LAUNCHER=slurm: a job array
#   make status DIR=multirun/ranks/<time>            # where a grid stands: done / running / pending / failed
#   make report DIR=multirun/ranks/2026-01-01_12-00-00   # (re)write the report of any grid
SWEEPS_DIR := $(patsubst %/,%,$(dir $(lastword $(MAKEFILE_LIST))))
STUDIES := $(sort $(basename $(notdir $(wildcard $(SWEEPS_DIR)/*.yaml))))
PY ?= .venv/bin/python
ARGS ?=
DIR ?=
LAUNCHER ?=

.PHONY: studies report status $(addprefix sweep-,$(STUDIES))

studies: ## list the studies in sweeps/ (run one with make sweep-<study> ARGS="...")
	@for s in $(STUDIES); do \
	  printf "  make sweep-%-14s %s\n" "$$s" "$$(grep -m1 -E '^# [^@]' $(SWEEPS_DIR)/$$s.yaml | sed -e 's/^# //' -e 's/^Study `[^`]*` — //')"; \
	done

# The grid writes its report at the end (src.records.GridSummary) and exits non-zero when a run failed.
$(addprefix sweep-,$(filter-out dpo,$(STUDIES))): sweep-%:
	@dir="$(if $(DIR),$(DIR),multirun/$*/$$(date +%Y-%m-%d_%H-%M-%S))"; \
	$(PY) -m src.run -m +sweep=$* hydra.sweep.dir="$$dir" $(if $(LAUNCHER),hydra/launcher=$(LAUNCHER) )$(ARGS)

# The dpo study has two stages: SFT per method into <dir>/sft/<method> (the same YAML with objective=sft and one
# β), then the DPO grid from them; the report of <dir> shows both stages (SFT records included).
sweep-dpo:
	@dir="$(if $(DIR),$(DIR),multirun/dpo/$$(date +%Y-%m-%d_%H-%M-%S))"; \
	$(PY) -m src.run -m +sweep=dpo objective=sft beta=0.1 hydra.sweep.dir="$$dir/sft" 'hydra.sweep.subdir=$${method.name}' \
	  $(if $(LAUNCHER),hydra/launcher=$(LAUNCHER) )$(ARGS) && \
	$(PY) -m src.run -m +sweep=dpo sft_runs="$$dir/sft" hydra.sweep.dir="$$dir" $(if $(LAUNCHER),hydra/launcher=$(LAUNCHER) )$(ARGS)

report: ## write report.md, results.csv and plots for a grid: make report DIR=multirun/<study>/<time>
	@test -n "$(DIR)" || { echo "usage: make report DIR=<sweep folder>"; exit 2; }
	$(PY) -m src.report "$(DIR)"

status: ## where a grid stands (done / running / pending / failed): make status DIR=multirun/<study>/<time>
	@test -n "$(DIR)" || { echo "usage: make status DIR=<sweep folder>"; exit 2; }
	$(PY) -m src.status "$(DIR)"
