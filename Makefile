# The two commands of the README. Both do all set-up first (idempotent, see scripts/setup.sh).
VENV ?= .venv
PY := $(VENV)/bin/python
PROFILE ?= offline

.PHONY: setup reproduce lab lint test bench clean-data

setup:
	VENV=$(VENV) bash scripts/setup.sh

## make reproduce: set up, then run every notebook headless on the offline profile (the main job)
reproduce: setup
	bash scripts/install_browser.sh
	$(PY) scripts/run_notebooks.py --profile $(PROFILE)
	[ "$(PROFILE)" != offline ] || $(PY) scripts/write_findings.py --profile $(PROFILE)

## make lab: JupyterLab on notebooks/ with this project's environment as the kernel; every notebook opened
## there reads PROFILE (make lab PROFILE=quick after PROFILE=quick make reproduce)
lab: setup
	SAE_LAB_PROFILE=$(PROFILE) $(VENV)/bin/jupyter lab notebooks/

## make lint: ruff's formatter and linter over the whole tree (config in pyproject.toml)
lint: setup
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/ruff check .

## make test: set up, lint, then unit tests + every notebook on the tiny profile
test: setup lint
	bash scripts/install_browser.sh
	$(PY) -m pytest -q

## make bench: every speed/memory benchmark (each prints ratios against baselines run alongside)
bench: setup
	$(PY) benchmarks/bench_collect.py
	$(PY) benchmarks/bench_train.py
	$(PY) benchmarks/bench_bf16.py
	$(PY) benchmarks/bench_matching.py
	$(PY) benchmarks/bench_positions_memory.py

clean-data:
	rm -rf data/activations data/saes data/executed data/figures
