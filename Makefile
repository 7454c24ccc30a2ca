# Real-time recommender: common tasks. `make help` lists them.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.installed
TOOLS_VENV ?= .venv-tools
export TF_USE_LEGACY_KERAS := 1
export TF_CPP_MIN_LOG_LEVEL := 2
DATA ?= synthetic

.DEFAULT_GOAL := help

help: ## List the targets
	@grep -hE '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  \033[36m%-18s\033[0m %s\n", $$1, $$2}'

$(STAMP): setup.py requirements/constraints.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip setuptools wheel
	$(PIP) install -q -c requirements/constraints.txt -e '.[all]'
	touch $(STAMP)

venv: $(STAMP) ## Create the virtual environment (.venv) with the pinned stack

$(TOOLS_VENV)/.installed: requirements/tools.txt
	test -x $(TOOLS_VENV)/bin/python || python3 -m venv $(TOOLS_VENV)
	$(TOOLS_VENV)/bin/pip install -q -r requirements/tools.txt
	touch $@

# Provider schemas for tools/terraform_gate/: the cdktf wheels are downloaded without their
# dependencies (only the jsii JSON inside is read) and a compact schema is cached next to them.
SCHEMA_DIR := build/provider-schemas
$(SCHEMA_DIR)/.installed: requirements/provider-schemas.txt $(wildcard tools/terraform_gate/*.py) $(TOOLS_VENV)/.installed
	$(TOOLS_VENV)/bin/pip download -q --no-deps -r requirements/provider-schemas.txt -d $(SCHEMA_DIR)/wheels
	$(TOOLS_VENV)/bin/python -m tools.terraform_gate --build-schemas --schema-dir $(SCHEMA_DIR)
	touch $@

tools: $(TOOLS_VENV)/.installed $(SCHEMA_DIR)/.installed ## checkov venv (its pins clash with the stack) + provider schemas

test: venv tools browser lint terraform-check ## Run every check and test (starts the emulators itself)
	$(PY) -m pytest tests

test-unit: venv ## Unit tests only (no emulators)
	$(PY) -m pytest tests/unit

test-integration: venv ## Integration tests on the real emulators
	$(PY) -m pytest tests/integration

lint: venv ## ruff over the code
	$(VENV)/bin/ruff check .

format: venv ## ruff format + autofix
	$(VENV)/bin/ruff check --fix . ; $(VENV)/bin/ruff format .

terraform-check: venv tools ## terraform fmt -check, provider-schema gate and checkov over terraform/
	terraform fmt -check -recursive terraform
	$(PY) -m tools.terraform_gate terraform --schema-dir $(SCHEMA_DIR)
	$(TOOLS_VENV)/bin/checkov -d terraform --quiet --compact --framework terraform --skip-download

stack-start: venv ## Start the Pub/Sub and Firestore emulators and create topics
	$(PY) -m scripts.local_stack start

stack-stop: venv ## Stop the emulators started by stack-start
	$(PY) -m scripts.local_stack stop

stack-status: venv ## Show the local stack
	$(PY) -m scripts.local_stack status

demo: venv browser ## The main job end to end on the emulators (see README)
	$(PY) -m scripts.demo $(DEMO_ARGS)

bench-publish: venv ## Publish 20,000 synthetic events through the emulator
	$(PY) -m bench.publish $(BENCH_ARGS)

bench-quality: venv ## Offline quality vs baselines: make bench-quality DATA=synthetic|ml-latest-small|gowalla|ml-100k|PATH
	$(PY) -m bench.quality --data $(DATA) $(BENCH_ARGS)

bench-stream: venv ## Streaming freshness and throughput on DirectRunner + emulators
	$(PY) -m bench.stream $(BENCH_ARGS)

bench-crash: venv ## kill -9 the streaming pipeline at random moments (paced, burst, backlog) + a hot user
	$(PY) -m bench.crash $(BENCH_ARGS)

bench-serving: venv wrk ## Recommend function latency/throughput vs bare read and find_nearest
	$(PY) -m bench.serving $(BENCH_ARGS)

bench-serving-1m: venv wrk ## bench-serving on 1,000,000 items (the trained towers embed them; first run ~minutes)
	$(PY) -m bench.serving --items 1000000 $(BENCH_ARGS)

browser: ## Install headless Chromium + chromedriver (Debian packages) if missing: console test, demo
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || { apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver; }

wrk: ## Install the wrk load generator (Debian package) if missing
	@command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk; }

clean: ## Remove caches and local state (not the venvs)
	rm -rf .pytest_cache .ruff_cache .local build *.egg-info

.PHONY: help venv tools test test-unit test-integration lint format terraform-check stack-start \
	stack-stop stack-status wrk browser demo bench-publish bench-quality bench-stream bench-crash bench-serving bench-serving-1m clean
