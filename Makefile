# Every target here wraps a command documented in README.md.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# Without its dependencies: they are the `hub` extra (no TensorFlow; README, KerasHub).
KERAS_HUB := keras-hub==0.32.0

NPROC ?= 2
NDEV ?= 4
CONFIG ?= configs/lm.py
WORKDIR ?= runs/default
ARGS ?=

.PHONY: setup run simulate test test-fast lint bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev,hub]'
	$(PY) -m pip install -q --no-deps '$(KERAS_HUB)'
	touch $(STAMP)

setup: $(STAMP)

# Trains the default config on a local simulation: 2 processes x 4 CPU devices.
run: $(STAMP)
	$(PY) scripts/simulate.py --num_processes=2 --devices_per_process=4 -- \
	  --config=configs/lm.py --workdir=$(WORKDIR) $(ARGS)

simulate: $(STAMP)
	$(PY) scripts/simulate.py --num_processes=$(NPROC) --devices_per_process=$(NDEV) -- \
	  --config=$(CONFIG) --workdir=$(WORKDIR) $(ARGS)

test: $(STAMP)
	$(PY) -m pytest tests $(ARGS)

test-fast: $(STAMP)
	$(PY) -m pytest tests -m "not multiprocess" $(ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check launcher configs trainer checkpointing scripts tests
	$(VENV)/bin/ruff format --check launcher configs trainer checkpointing scripts tests

bench: $(STAMP)
	$(PY) scripts/bench.py $(ARGS)

clean:
	rm -rf $(VENV) runs .pytest_cache
