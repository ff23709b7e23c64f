# Aisle: every day-to-day command. `make help` lists them.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.aisle-installed
# Where pip takes torch from first, when set: PyPI's torch==2.13.0 is the CUDA build (GBs of nvidia-* wheels), so a
# machine without a local CPU wheel (pip's find-links) runs `make setup TORCH_INDEX=https://download.pytorch.org/whl/cpu`.
TORCH_INDEX ?=
export BUF_CACHE_DIR ?= $(CURDIR)/.cache/buf

.DEFAULT_GOAL := help
.PHONY: help setup demo test test-unit test-integration test-e2e lint format proto api-wheel proto-check proto-breaking k8s-check check train train-online-retail evaluate triton bench-retrieval bench-e2e bench-e2e-triton bench-handlers bench-tracing models-check bench-ranking clean

help: ## List the targets
	@grep -hE '^[a-zA-Z0-9_-]+:.*## ' $(MAKEFILE_LIST) | awk -F ':.*## ' '{printf "  %-18s %s\n", $$1, $$2}'

setup: $(STAMP) ## Create .venv and install aisle with the cpu, train and dev extras (quick when nothing changed)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(if $(TORCH_INDEX),$(BIN)/pip install --quiet --disable-pip-version-check 'torch==2.13.0' --index-url $(TORCH_INDEX))
	set -o pipefail; $(BIN)/pip install --quiet --disable-pip-version-check -e '.[cpu,train,dev]' 2>&1 \
	  | { grep -v 'is ignored' || true; }
	@$(BIN)/python -c "import services.cli, torch, onnxruntime" || { echo "setup failed: see pip output above"; exit 1; }
	$(BIN)/pip check
	@touch $(STAMP)

demo: setup ## The main job end to end: train small models, start the three services, send requests, stop
	$(BIN)/aisle demo

triton: ## Install the local Triton server (python backend) the Triton tests start, under .cache/triton
	PYTHON=$(PYTHON) scripts/install_triton.sh

test: setup triton ## Run the whole test suite (unit, integration, end-to-end)
	$(BIN)/python -m pytest

test-unit: setup ## Unit tests only (seconds)
	$(BIN)/python -m pytest tests/unit

test-integration: setup ## In-process gRPC servers on port 0 with real models
	$(BIN)/python -m pytest tests/integration

test-e2e: setup ## The services as separate processes, and the demo
	$(BIN)/python -m pytest tests/e2e

models-check: setup ## Validate every model in model_repository/ (layout, configs, ONNX graphs, parity)
	$(BIN)/aisle models validate model_repository

bench-ranking: setup triton ## Ranking benchmark: Rank RPC embedded (batched/unbatched) vs local Triton vs torch eager
	$(BIN)/python bench/ranking.py

bench-retrieval: setup ## Retrieval benchmark (1M x 64): ScaNN vs exact vs faiss, filters, Retrieve RPC at 200/s
	$(BIN)/python bench/retrieval.py

bench-e2e: setup ## End-to-end open-loop load: three service processes vs a bare echo chain, latency vs rate
	$(BIN)/python bench/e2e.py --workdir .cache/e2e-work

bench-handlers: setup ## Each service's handler in-process (no gRPC): CPU per request, per stage and source
	$(BIN)/python bench/handlers.py

bench-tracing: setup ## CPU per gRPC call (no tracing, the OpenTelemetry grpc instrumentation, Aisle's own spans) and per span
	$(BIN)/python bench/tracing.py

bench-e2e-triton: setup triton ## The same load with ranking on a local Triton server
	$(BIN)/python bench/e2e.py --workdir .cache/e2e-work --ranking-backend triton --out bench/results/e2e_triton.json

train: setup ## Train two-tower + sequence ranker on the synthetic shop into model_repository/ and artifacts/
	$(BIN)/aisle train

train-online-retail: setup ## Train on Online Retail ($$AISLE_ONLINE_RETAIL) into artifacts/online_retail (its own model repository beside its index)
	@test -n "$$AISLE_ONLINE_RETAIL" || { echo "set AISLE_ONLINE_RETAIL to the Online Retail parquet file"; exit 2; }
	@# Not model_repository/sequence_ranker, which `aisle train` (the synthetic shop) writes with artifacts/index: a
	@# ranker served with another training's index knows none of its candidates.
	mkdir -p artifacts/online_retail/model_repository/sequence_ranker
	cp -r model_repository/sequence_ranker/config.pbtxt model_repository/sequence_ranker/configs \
	  artifacts/online_retail/model_repository/sequence_ranker/
	$(BIN)/aisle train --data "$$AISLE_ONLINE_RETAIL" --out artifacts/online_retail \
	  --model-repository artifacts/online_retail/model_repository --seed 0

evaluate: setup ## Offline evaluation of artifacts/online_retail (JSON, Markdown, plots)
	$(BIN)/aisle evaluate --artifacts artifacts/online_retail --out artifacts/online_retail/evaluation.json

proto: setup ## Regenerate the Python stubs in gen/python from protos/
	PYTHON=$(CURDIR)/$(BIN)/python scripts/gen_protos.sh

api-wheel: setup ## Build the aisle-api wheel (the gRPC stubs only, for callers) into dist/
	PYTHON=$(CURDIR)/$(BIN)/python scripts/build_api_wheel.sh dist

proto-check: setup ## Fail if gen/python is stale against protos/
	@tmp=$$(mktemp -d) && trap 'rm -rf "$$tmp"' EXIT && \
	  PYTHON=$(CURDIR)/$(BIN)/python scripts/gen_protos.sh "$$tmp" && \
	  { diff -r -q "$$tmp/aisle" gen/python/aisle -x __pycache__ && echo "generated stubs are up to date" || \
	  { echo "gen/python is stale: run 'make proto' and commit the result"; exit 1; }; }

# The published API every change must stay compatible with (wire and generated code: buf's FILE rules): the commit
# of the last API release. Move it forward when a release is cut; a deliberate break is a new package (v2).
PROTO_BASELINE ?= ef0e965d8577f75df860a7c905165b25d98cd5e1

proto-breaking: setup ## Fail if protos/ breaks the API as of PROTO_BASELINE (buf breaking: a field renumbered, removed, retyped)
	@if git cat-file -e "$(PROTO_BASELINE)^{commit}" 2>/dev/null; then \
	  $(BIN)/buf breaking --against '.git#ref=$(PROTO_BASELINE)' && echo "protos/ keep the API of $(PROTO_BASELINE)"; \
	else \
	  echo "WARNING: proto-breaking skipped: commit $(PROTO_BASELINE) is not in this clone (a shallow one?);" \
	    "run 'git fetch --unshallow' to check the protos against it"; \
	fi

lint: setup ## ruff on the code, buf lint (STANDARD) on the protos
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/buf lint

format: setup ## Apply ruff's fixes and formatting
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

k8s-check: setup ## Render every kustomize overlay/component combination and validate it offline
	PATH=$(CURDIR)/$(BIN):$$PATH scripts/k8s_check.sh

check: lint proto-check proto-breaking k8s-check models-check ## Everything CI checks besides the tests

clean: ## Remove generated artefacts (not the venv)
	rm -rf artifacts .pytest_cache .ruff_cache .cache
	find model_repository -mindepth 2 -maxdepth 2 -type d \( -regex '.*/[0-9]+' -o -name '.staging-*' -o -name '.retired-*' \) -exec rm -rf {} +
