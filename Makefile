# Developer and CI entry points. On a fresh machine:
#   make test     set up .venv, build rspnet (C++ + CUDA kernels when nvcc exists), run the tests
#   make search   set up .venv, build rspnet, run the default two-stage search on synthetic data
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
MAX_JOBS ?= 2
export MAX_JOBS

.PHONY: setup test test-gpu bench search info clean FORCE

$(PY):
	$(PYTHON) -m venv $(VENV)

# The install is a stamp file: the extension is compiled again only when
# something it is built from changed (csrc/, setup.py, pyproject.toml, the
# installed torch) or when it is gone (make clean), not on every make target.
# Python code needs no reinstall: the package is installed editable.
STAMP := $(VENV)/.rspnet-installed
BUILD_INPUTS := $(shell find csrc -type f 2>/dev/null) setup.py pyproject.toml \
	$(wildcard $(VENV)/lib/python*/site-packages/torch/version.py)
EXTENSION := $(wildcard rspnet/_C*.so)

# Build requirements first: the extension compiles against the installed torch
# (--no-build-isolation), then the package with its runtime and test deps.
$(STAMP): $(PY) $(BUILD_INPUTS) $(if $(EXTENSION),,FORCE)
	$(PY) -m pip install -q "torch>=2.6" "triton>=3.2" ninja "setuptools>=64" wheel
	$(PY) -m pip install -q -e ".[test]" --no-build-isolation
	touch $@

FORCE:

setup: $(STAMP)
	$(PY) -m rspnet.info

test: setup
	$(PY) -m pytest -q

test-gpu: setup
	$(PY) -m pytest -q -m gpu

bench: setup
	$(PY) -m pytest benchmarks -q --benchmark-enable --benchmark-columns=min,median,mean,rounds

search: setup
	$(PY) -m rspnet.search

info:
	$(PY) -m rspnet.info

clean:
	rm -rf build *.egg-info rspnet/_C*.so rspnet/_C_build.json $(STAMP)
