# Set-up and entry points. Every target installs what it needs into .venv on a
# fresh machine. torch is pinned to the CPU build (an unpinned torch would pull
# a multi-GB CUDA build).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH := torch==2.13.0

.PHONY: install sparse test demo bench

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip setuptools wheel

$(VENV)/.installed: setup.cfg pyproject.toml | $(BIN)/python
	$(BIN)/pip install $(TORCH)
	$(BIN)/pip install -e '.[test,plot,progress]'
	touch $@

install: $(VENV)/.installed

# Optional accelerated backends (built from source, ~13 min the first time;
# pip's wheel cache makes later installs fast). They build against the
# installed torch, hence --no-build-isolation.
sparse: install
	$(BIN)/pip install --no-build-isolation 'torch-scatter>=2.1' 'torch-sparse>=0.6.17'

test: install
	$(BIN)/python -m pytest -q

demo: install
	$(BIN)/python examples/train_electronics.py

bench: install
	$(BIN)/python benchmarks/bench_eval.py
	$(BIN)/python benchmarks/bench_models.py
