# Two commands do all the set-up on a fresh machine:
#   make serve   venv + package + models + index of kb/, then the service
#   make test    the same set-up, then the whole test suite (CI runs this)
# Both are idempotent: a second run reuses the venv, the models and an up-to-date index.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.kbgate-installed
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false
# llama.cpp built for this CPU (-march=native), AMX left out: on these VMs the CPU lists AMX but
# ggml's AMX matmul dies with SIGILL on its first tile load (seen here), so native alone crashes.
AMX_OFF := -mno-amx-tile -mno-amx-int8 -mno-amx-bf16
LLAMA_CMAKE_ARGS ?= -DGGML_NATIVE=ON "-DCMAKE_C_FLAGS=$(AMX_OFF)" "-DCMAKE_CXX_FLAGS=$(AMX_OFF)"

.PHONY: setup models index serve test test-fast bench browser clean

setup: $(STAMP) models

$(STAMP): pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first and pinned: this machine has the CPU build on disk; unpinned pulls CUDA
	$(BIN)/pip install -q torch==2.13.0
	# llama-cpp-python from source with native flags (7-10 minutes on 2 cores); pip keeps the built
	# wheel in this machine's cache, so a second setup installs it in seconds
	@command -v cmake >/dev/null && command -v g++ >/dev/null || { \
	  echo "building llama-cpp-python needs cmake and g++: apt-get install cmake build-essential"; exit 1; }
	@echo "building llama-cpp-python 0.3.36 for this CPU (once per machine) ..."
	CMAKE_ARGS='$(LLAMA_CMAKE_ARGS)' $(BIN)/pip install -c constraints.txt 'llama-cpp-python[server]==0.3.36'
	$(BIN)/pip install -q -c constraints.txt -e '.[bundled,multilingual,test,llamacpp]'
	@touch $(STAMP)

models: $(STAMP)
	$(BIN)/kbgate models fetch

index: setup
	$(BIN)/kbgate index

serve: index
	$(BIN)/kbgate serve

# Debian's Chromium for the browser tests (Playwright drives it; no browser download).
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium fonts-wqy-microhei fonts-noto-color-emoji >/dev/null; \
	  else echo "install Debian's chromium (sudo apt-get install chromium) for the browser tests"; fi; }

test: setup browser
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q

test-fast: setup
	$(BIN)/python -m pytest -q -m "not slow and not browser"

bench: index
	$(BIN)/python bench/index.py
	$(BIN)/python bench/gate.py
	$(BIN)/python bench/answer.py
	$(BIN)/python bench/grounded.py
	$(BIN)/python bench/service.py
	$(BIN)/python bench/retrieval.py
	$(BIN)/python bench/engines.py
	$(BIN)/python bench/load.py
	$(BIN)/python bench/reload.py
	$(BIN)/python bench/feedback.py

clean:
	rm -rf $(VENV) .models .index
