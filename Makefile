# unimim — set-up, demo, tests. `make demo` and `make test` do all set-up on a fresh Debian machine with Python 3.11.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
FMNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
DEMO_RECIPE ?= recipes/image/data2vec2_fmnist_cpu.yaml
DEMO_NAME ?= d2v2_fmnist
DEMO_FINETUNE ?= recipes/image/finetune_fmnist_cpu.yaml
RUNS ?= runs
# Shell snippet: install the Debian packages listed in $$missing when root; otherwise name them and fail.
APT_ENSURE = if [ -z "$$missing" ]; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ]; then \
		echo "installing Debian packages:$$missing"; \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing) >/dev/null; \
	else \
		echo "error: missing Debian packages:$$missing"; \
		echo "       Install them as root: apt-get install$$missing"; exit 1; \
	fi
TEXT_DATA ?= data/text
TEXT_TOKENIZER := $(TEXT_DATA)/tokenizer.json
TEXT_RECIPE ?= recipes/text/data2vec2_text_cpu.yaml
TEXT_NAME ?= d2v2_text_cpu

SPEECH_DATA ?= data/speech
SPEECH_RECIPE ?= recipes/speech/data2vec_tuxpaint_cpu.yaml
SPEECH_NAME ?= d2v_speech_tuxpaint
SPEECH_PACKAGES := tuxpaint-stamps-default espeak-ng flite sox
TUXPAINT := /usr/share/tuxpaint/stamps

.PHONY: help install data toolchain demo demo-image bench-image test test-deepspeed test-all lint bench clean data-text text-packages demo-text \
	data-speech demo-speech demo-beit demo-ibot

help:
	@echo "make demo   - set up; the cross-modal suite: data2vec on images, text and speech under one CPU budget"
	@echo "              (~30 min), each probed vs random weights and the raw input, fine-tuned vs from scratch"
	@echo "make demo-image - data2vec 2.0 on Fashion-MNIST at its recipe's budget, probed and fine-tuned (~11 min)"
	@echo "make bench-image - every image method on Fashion-MNIST under one CPU budget (~95 min)"
	@echo "make demo-text - text only: Webster 1913 + Python docs, 8K BPE, data2vec 2.0 (~10 min), WordNet probe"
	@echo "make demo-speech - data2vec on recorded speech (tuxpaint stamps, CPU ~9 min), keyword probe vs random"
	@echo "make demo-beit - BEiT on Fashion-MNIST: train the dVAE tokenizer, then BEiT, then probe (CPU, ~12 min)"
	@echo "make demo-ibot - iBOT on Fashion-MNIST, then probe (CPU, ~16 min)"
	@echo "make test   - set up, run the test suite (slow and GPU tests excluded)"
	@echo "make bench  - training-step throughput benchmark (benchmarks/)"
	@echo "make test-deepspeed - the DeepSpeed tests only (2-process CPU jobs, ~2 min)"

install: $(STAMP)

# The tested stack (constraints.txt) within the ranges of pyproject.toml; `pip install .` alone resolves the ranges.
$(STAMP): pyproject.toml setup.py constraints.txt
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "Python >= 3.11 is needed, found " + sys.version' \
		|| { echo "error: set PYTHON=/path/to/python3.11"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[test,tensorboard]'
	@touch $@

# Default data: Fashion-MNIST from Debian's dataset-fashion-mnist package (installed when running as root).
data:
	@missing=""; [ -f $(FMNIST) ] || missing=" dataset-fashion-mnist"; $(APT_ENSURE)

# DeepSpeed compiles a small shared-memory op on first use (ninja comes from pip; g++ and Python's headers from Debian).
toolchain:
	@missing=""; command -v g++ >/dev/null || missing="g++"; \
	$(PYTHON) -c 'import os, sysconfig; assert os.path.isfile(os.path.join(sysconfig.get_paths()["include"], "Python.h"))' \
		2>/dev/null || missing="$$missing $$(basename $$(readlink -f $(PYTHON)))-dev"; \
	$(APT_ENSURE)

# The cross-modal CPU suite: data2vec on images, text and speech under one wall-clock budget, each probed against
# random weights and the raw input and fine-tuned against from scratch; prints its table (runs/bench/cross_modal_cpu/).
DEMO_SUITE ?= bench/cross_modal_cpu

demo: install data data-text data-speech
	$(VENV)/bin/unimim bench $(DEMO_SUITE) out_dir=$(RUNS)/bench

# The image job alone: data2vec 2.0 on Fashion-MNIST at its recipe's budget, probed and fine-tuned.
demo-image: install data
	$(VENV)/bin/unimim pretrain $(DEMO_RECIPE) train.out_dir=$(RUNS)
	$(VENV)/bin/unimim probe $(RUNS)/$(DEMO_NAME)
	$(VENV)/bin/unimim finetune $(RUNS)/$(DEMO_NAME) $(DEMO_FINETUNE)

# Every image method under one CPU budget (~95 min): the table of docs/results.md.
bench-image: install data
	$(VENV)/bin/unimim bench bench/image_methods_cpu out_dir=$(RUNS)/bench

# Speech data (demo only; tests generate their own audio): recorded spoken descriptions from Debian's
# tuxpaint-stamps-default (pretraining manifest of its *_desc_*.ogg files) and 20 keywords synthesised with espeak-ng
# and flite by 172 voices, split by voice (probe). The Debian packages are installed when running as root.
# CTC fine-tuning: 400 short sentences of the text corpora spoken by 40 of those voices (test voices and sentences
# held out), in fairseq's tsv + ltr + wrd layout (~1 min on 2 cores).
data-speech: install
	@missing=""; for p in $(SPEECH_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	$(APT_ENSURE)
	@[ -f $(SPEECH_DATA)/tuxpaint.tsv ] || \
		$(PY) -m modalities.speech.data.build_manifest $(TUXPAINT) $(SPEECH_DATA)/tuxpaint.tsv --glob '*_desc_*.ogg'
	@[ -f $(SPEECH_DATA)/keywords/test.wrd ] || $(PY) -m modalities.speech.data.synth_keywords $(SPEECH_DATA)/keywords
	@[ -f $(SPEECH_DATA)/transcribed/test.ltr ] || { $(MAKE) --no-print-directory $(TEXT_DATA)/gcide.txt \
		$(TEXT_DATA)/pydocs.txt && $(PY) -m modalities.speech.data.synth_transcribed $(SPEECH_DATA)/transcribed \
		--text $(TEXT_DATA)/gcide.txt $(TEXT_DATA)/pydocs.txt; }

SPEECH_PATHS = data.manifest=$(SPEECH_DATA)/tuxpaint.tsv data.eval_train_manifest=$(SPEECH_DATA)/keywords/train.tsv \
	data.eval_test_manifest=$(SPEECH_DATA)/keywords/test.tsv

demo-speech: install data-speech
	$(VENV)/bin/unimim pretrain $(SPEECH_RECIPE) train.out_dir=$(RUNS) $(SPEECH_PATHS)
	$(VENV)/bin/unimim probe $(RUNS)/$(SPEECH_NAME)

# Text data: Webster 1913 (dict-gcide) and the Python docs (python3.11-doc) for pretraining, WordNet glosses
# (wordnet-base) for the probe; the Debian packages are installed when running as root. The corpora are extracted
# to plain text under $(TEXT_DATA) and an 8K byte-level BPE tokenizer is trained on them (~20 s).
text-packages:
	@missing=""; \
	[ -f /usr/share/dictd/gcide.dict.dz ] || missing="$$missing dict-gcide"; \
	[ -d /usr/share/doc/python3.11/html ] || missing="$$missing python3.11-doc"; \
	[ -f /usr/share/wordnet/data.noun ] || missing="$$missing wordnet-base"; \
	$(APT_ENSURE)

$(TEXT_DATA)/gcide.txt $(TEXT_DATA)/pydocs.txt &:
	$(MAKE) --no-print-directory text-packages
	$(PY) -m modalities.text.data.write_corpora $(TEXT_DATA)

$(TEXT_TOKENIZER): $(TEXT_DATA)/gcide.txt $(TEXT_DATA)/pydocs.txt
	$(VENV)/bin/unimim tokenizer train $@ $^ --vocab-size 8192

# the WordNet gloss-pair task (same lexicographer file or not) as GLUE TSVs, for recipes/text/finetune_wordnet_pairs_cpu
$(TEXT_DATA)/wordnet_pairs/train.tsv:
	$(MAKE) --no-print-directory text-packages
	$(PY) -m modalities.text.data.wordnet_pairs $(TEXT_DATA)/wordnet_pairs

data-text: install text-packages $(TEXT_TOKENIZER) $(TEXT_DATA)/wordnet_pairs/train.tsv

demo-text: install data-text
	$(VENV)/bin/unimim pretrain $(TEXT_RECIPE) train.out_dir=$(RUNS)
	$(VENV)/bin/unimim probe $(RUNS)/$(TEXT_NAME)

test: install data toolchain lint
	PATH="$(abspath $(VENV))/bin:$$PATH" $(PY) -m pytest

test-deepspeed: install toolchain
	PATH="$(abspath $(VENV))/bin:$$PATH" $(PY) -m pytest tests/train/test_deepspeed_config.py tests/train/test_deepspeed_launch.py

demo-beit: install data
	$(VENV)/bin/unimim pretrain recipes/image/dvae_fmnist_cpu.yaml train.out_dir=$(RUNS)
	$(VENV)/bin/unimim pretrain recipes/image/beit_fmnist_cpu.yaml train.out_dir=$(RUNS) method.tokenizer=$(RUNS)/dvae_fmnist
	$(VENV)/bin/unimim probe $(RUNS)/beit_fmnist

demo-ibot: install data
	$(VENV)/bin/unimim pretrain recipes/image/ibot_fmnist_cpu.yaml train.out_dir=$(RUNS)
	$(VENV)/bin/unimim probe $(RUNS)/ibot_fmnist


lint: install
	$(VENV)/bin/ruff check .

test-all: install data toolchain
	PATH="$(abspath $(VENV))/bin:$$PATH" $(PY) -m pytest -m "not gpu"

bench: install
	$(PY) benchmarks/step_throughput.py

clean:
	rm -rf $(VENV) $(RUNS) .pytest_cache
