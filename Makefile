# memjax Makefile. `make test` runs pytest; the HRRM pipeline (issue 4) lives under hrrm-*
# targets, with the short names its users know (tokenizer, train-all, ...) as aliases.
#
#   make setup        install memjax with the test extra
#   make pipeline     tokenizer -> train-all -> eval-all -> export -> report (tiny CPU configs)
#   make test         pytest (fast suite; slow tests: make test-slow)

PYTHON   ?= python
WORKDIRS ?= workdirs
ARTIFACTS?= artifacts/hrrm
TOKENIZER = $(ARTIFACTS)/tokenizer.json
HRRM_RUNS = hrm_reasoning titans_recall hrrm_planner hrrm_reasoner
TRAIN_FLAGS ?= --progress=false

.PHONY: setup test test-slow tokenizer train-all eval-all export report pipeline \
        hrrm-tokenizer hrrm-train-all hrrm-eval-all hrrm-export hrrm-report hrrm-pipeline hrrm-bench FORCE

setup:
	$(PYTHON) -m pip install -e ".[test,parity]"

test:
	$(PYTHON) -m pytest -n 2

test-slow:
	$(PYTHON) -m pytest -q -m slow

# --- HRRM (issue 4) ---------------------------------------------------------------------------
tokenizer: hrrm-tokenizer
train-all: hrrm-train-all
eval-all: hrrm-eval-all
export: hrrm-export
report: hrrm-report
pipeline: hrrm-pipeline

hrrm-tokenizer: $(TOKENIZER)
$(TOKENIZER):
	$(PYTHON) experiments/build_tokenizer.py --out=$(TOKENIZER)

hrrm-train-%: FORCE
	$(PYTHON) experiments/train.py --config=configs/$*.py --workdir=$(WORKDIRS)/$* $(TRAIN_FLAGS)

hrrm-eval-%: FORCE
	$(PYTHON) experiments/eval.py --workdir=$(WORKDIRS)/$*

# one heavy job at a time: the runs go one after another
hrrm-train-all:
	for r in $(HRRM_RUNS); do $(MAKE) --no-print-directory hrrm-train-$$r || exit 1; done

hrrm-eval-all:
	for r in $(HRRM_RUNS); do $(MAKE) --no-print-directory hrrm-eval-$$r || exit 1; done

hrrm-export: $(TOKENIZER)
	$(PYTHON) experiments/export_hrrm.py --workdir=$(WORKDIRS)/hrrm_planner --tokenizer=task --out=$(ARTIFACTS)/planner
	$(PYTHON) experiments/export_hrrm.py --workdir=$(WORKDIRS)/hrrm_reasoner --tokenizer=task --out=$(ARTIFACTS)/reasoner
	$(PYTHON) experiments/export_hrrm.py --workdir=$(WORKDIRS)/titans_recall --tokenizer=$(TOKENIZER) --out=$(ARTIFACTS)/memory

hrrm-report:
	$(PYTHON) experiments/report_hrrm.py --workdirs=$(subst $(eval) ,$(comma),$(addprefix $(WORKDIRS)/,$(HRRM_RUNS))) --out=$(ARTIFACTS)/report.md

hrrm-bench:
	$(PYTHON) experiments/bench_hrm.py

hrrm-pipeline: hrrm-tokenizer hrrm-train-all hrrm-eval-all hrrm-export hrrm-report

comma := ,
FORCE:
