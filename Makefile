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
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

clean:
	rm -rf $(VENV) runs .pytest_cache
