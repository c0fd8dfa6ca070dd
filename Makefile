# Nebula-Edge: the two commands a newcomer needs are `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp

.PHONY: all setup binaries dist demo test check samples clean help lab lab-down
.DEFAULT_GOAL := all

all: setup binaries ## set up the venv, then build single-file bin/edge and bin/nebctl

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "Python 3.11+ is required"'
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev,build]'
	@touch $@

setup: $(STAMP) ## create .venv and install the project with its dev and build tools

binaries: setup ## bin/edge, bin/nebctl: PyInstaller one-file, rebuilt when the sources change
	$(PY) packaging/build_binaries.py

dist: setup ## wheel and sdist in dist/
	$(PY) -m build

demo: setup ## start agents, deploy sample/double with nebctl, invoke it, stop
	$(PY) scripts/demo.py

PROMTOOL := build/tools/promtool

$(PROMTOOL):
	scripts/get-promtool.sh

test: setup $(PROMTOOL) ## run the whole test suite
	@$(PY) scripts/lab.py check-system
	$(PY) -m pytest -q

check: setup ## lint and type-check
	$(VENV)/bin/ruff check src tests bench sample scripts packaging
	$(VENV)/bin/mypy

samples: setup ## rebuild every sample .wasm from source (ziglang + wat2wasm)
	$(PY) sample/build.py

N ?= 5

lab: setup ## start N hosts (network namespaces, root) with an agent each: make lab N=5
	$(PY) scripts/lab.py up $(N)

lab-down: ## remove everything any lab or test run left (agents, namespaces, bridges, temp dirs)
	$(if $(wildcard $(PY)),$(PY),$(PYTHON)) scripts/lab.py down

clean: ## remove the venv, local agent data and build outputs
	rm -rf $(VENV) data .pytest_cache .mypy_cache .ruff_cache bin build dist

help:
	@grep -E '^[a-z-]+:.*## ' Makefile | sed 's/:.*## /\t/'
