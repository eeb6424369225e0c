# dqn_cli developer commands. `make help` lists them.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# The CPU wheel of torch: an unpinned torch can resolve to a multi-GB CUDA build. For a GPU,
# e.g.: make install TORCH_PIP_FLAGS="--index-url https://download.pytorch.org/whl/cu128"
TORCH_SPEC      ?= torch==2.13.0
TORCH_PIP_FLAGS ?=
ARGS   ?=

.DEFAULT_GOAL := help
.PHONY: help install install-bench train test test-full lint format bench bench-gpu clean

help: ## Show this help
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  \033[36m%-14s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

$(BIN)/dqn: pyproject.toml
	$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 10))' || { echo "Python >= 3.10 needed (PYTHON=$(PYTHON))"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH_PIP_FLAGS) "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q -e ".[dev,sweeps]" "$(TORCH_SPEC)"
	touch $@

install: $(BIN)/dqn ## Create .venv and install dqn_cli with CPU torch (editable, dev tools, sweep plugins)

install-bench: install ## Also install the benchmark peers (Stable-Baselines3)
	$(BIN)/python -m pip install -q -e ".[dev,sweeps,bench]" "$(TORCH_SPEC)"

train: install ## Train the default CartPole agent (extra overrides: make train ARGS="seed=3")
	$(BIN)/dqn train $(ARGS)

test: install ## Run the test suite without the slow learning runs
	@$(BIN)/python -m pytest -m "not slow" $(ARGS); rc=$$?; \
	  if [ $$rc -eq 5 ]; then echo "error: pytest collected no tests"; exit 1; fi; exit $$rc

test-full: install ## Run every test, the slow learning runs included
	@$(BIN)/python -m pytest $(ARGS); rc=$$?; \
	  if [ $$rc -eq 5 ]; then echo "error: pytest collected no tests"; exit 1; fi; exit $$rc

lint: install ## Ruff lint and format check
	$(BIN)/ruff check dqn_cli tests scripts
	$(BIN)/ruff format --check dqn_cli tests scripts

format: install ## Apply ruff's fixes and formatting
	$(BIN)/ruff check --fix dqn_cli tests scripts
	$(BIN)/ruff format dqn_cli tests scripts

bench: install-bench ## CartPole vs Stable-Baselines3 (10 seeds); DQN-extension ablation; PER speed; Atari CPU speed and replay memory vs SB3
	$(BIN)/python scripts/bench_cartpole.py $(ARGS)
	$(BIN)/python scripts/bench_ablation.py
	$(BIN)/python scripts/bench_per_speed.py
	$(BIN)/python scripts/bench_atari.py

bench-gpu: install-bench ## Atari on a CUDA GPU: env steps/s at the Nature replay ratio vs SB3 (a torch with CUDA needed)
	$(BIN)/python scripts/bench_gpu.py $(ARGS)

clean: ## Remove build artefacts (keeps .venv and outputs/)
	rm -rf build dist *.egg-info .pytest_cache .ruff_cache
