# unimim — set-up, demo, tests. `make demo` and `make test` do all set-up on a fresh Debian machine with Python 3.11.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
FMNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
DEMO_RECIPE ?= recipes/image/data2vec2_fmnist_cpu.yaml
DEMO_NAME ?= d2v2_fmnist
RUNS ?= runs

.PHONY: help install data demo demo-beit demo-ibot test test-all lint bench clean

help:
	@echo "make demo   - set up, pretrain data2vec 2.0 on Fashion-MNIST (CPU, ~10 min), probe vs random weights"
	@echo "make demo-beit - BEiT on Fashion-MNIST: train the dVAE tokenizer, then BEiT, then probe (CPU, ~12 min)"
	@echo "make demo-ibot - iBOT on Fashion-MNIST, then probe (CPU, ~10 min)"
	@echo "make test   - set up, run the test suite (slow and GPU tests excluded)"
	@echo "make bench  - training-step throughput benchmark (benchmarks/)"

install: $(STAMP)

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "Python >= 3.11 is needed, found " + sys.version' \
		|| { echo "error: set PYTHON=/path/to/python3.11"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test,tensorboard]'
	@touch $@

# Default data: Fashion-MNIST from Debian's dataset-fashion-mnist package (installed when running as root).
data:
	@if [ -f $(FMNIST) ]; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ]; then \
		echo "installing Debian package dataset-fashion-mnist"; \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist) >/dev/null; \
	else \
		echo "error: Fashion-MNIST is missing ($(FMNIST))."; \
		echo "       Install it as root: apt-get install dataset-fashion-mnist"; exit 1; \
	fi

demo: install data
	$(VENV)/bin/unimim pretrain $(DEMO_RECIPE) train.out_dir=$(RUNS)
	$(VENV)/bin/unimim probe $(RUNS)/$(DEMO_NAME)

demo-beit: install data
	$(VENV)/bin/unimim pretrain recipes/image/dvae_fmnist_cpu.yaml train.out_dir=$(RUNS)
	$(VENV)/bin/unimim pretrain recipes/image/beit_fmnist_cpu.yaml train.out_dir=$(RUNS) method.tokenizer=$(RUNS)/dvae_fmnist
	$(VENV)/bin/unimim probe $(RUNS)/beit_fmnist

demo-ibot: install data
	$(VENV)/bin/unimim pretrain recipes/image/ibot_fmnist_cpu.yaml train.out_dir=$(RUNS)
	$(VENV)/bin/unimim probe $(RUNS)/ibot_fmnist

test: install data lint
	$(PY) -m pytest

lint: install
	$(VENV)/bin/ruff check .

test-all: install data
	$(PY) -m pytest -m "not gpu"

bench: install
	$(PY) benchmarks/step_throughput.py

clean:
	rm -rf $(VENV) $(RUNS) .pytest_cache
