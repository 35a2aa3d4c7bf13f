# moldiff: two commands on a fresh machine.
#   make sample   -> creates .venv, installs moldiff, samples molecules from the shipped qm9 model
#   make test     -> creates .venv, installs moldiff[dev], runs the default (fast, CPU) test suite
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
# torch is pinned and installed first: 2.13.0 resolves to the CPU build on this machine's disk;
# a bare "torch" requirement would pull a multi-GB CUDA build.
TORCH  ?= torch==2.13.0
NUM    ?= 100
STEPS  ?= 100
OUT    ?= samples.sdf

.PHONY: install install-dev sample test test-all bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q $(TORCH)
	$(PIP) install -q -e .
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed
	$(PIP) install -q -e ".[dev]"
	touch $@

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

sample: install
	$(VENV)/bin/moldiff sample --model qm9 --num $(NUM) --steps $(STEPS) --seed 0 --out $(OUT)

test: install-dev
	$(VENV)/bin/ruff check moldiff tests benchmarks
	$(PY) -m pytest -q

test-all: install-dev
	$(PY) -m pytest -q -m "" 

bench: install-dev
	$(PY) benchmarks/speed/bench_sampling.py
	$(PY) benchmarks/speed/bench_training.py

clean:
	rm -rf $(VENV) .pytest_cache
