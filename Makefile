# Nebula-Edge: the two commands a newcomer needs are `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp

.PHONY: all setup demo test check samples clean help
.DEFAULT_GOAL := all

all: setup ## set up the venv with edge and nebctl (bin/ single-file builds: see issue 5)

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "Python 3.11+ is required"'
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	@touch $@

setup: $(STAMP) ## create .venv and install the project with its dev tools

demo: setup ## start agents, deploy sample/double with nebctl, invoke it, stop
	$(PY) scripts/demo.py

test: setup ## run the whole test suite
	$(PY) -m pytest -q

check: setup ## lint and type-check
	$(VENV)/bin/ruff check src tests bench sample scripts
	$(VENV)/bin/mypy

samples: setup ## rebuild every sample .wasm from source (ziglang + wat2wasm)
	$(PY) sample/build.py

clean: ## remove the venv and local agent data
	rm -rf $(VENV) data .pytest_cache .mypy_cache .ruff_cache

help:
	@grep -E '^[a-z-]+:.*## ' Makefile | sed 's/:.*## /\t/'
