# Tollgate — every target installs what it needs itself. `make help` lists them.
SHELL := /bin/bash
.DEFAULT_GOAL := help
PY := .venv/bin/python
export TOLLGATE_CACHE ?= $(or $(XDG_CACHE_HOME),$(HOME)/.cache)/tollgate

.PHONY: help
help: ## List every target with one line each
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  \033[36m%-16s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

.PHONY: venv
venv: ## Create or refresh the Python environment (.venv) from uv.lock
	@hack/bootstrap.sh

.PHONY: lock
lock: ## Re-resolve dependencies into uv.lock and sync the environment
	@hack/bootstrap.sh --lock

.PHONY: run
run: venv ## Start local Postgres + Valkey (unless POSTGRES_DSN/REDIS_URL are set), migrate, serve the gateway
	@$(PY) -m tollgate_dev.cli run

.PHONY: run-standin
run-standin: venv ## Like `make run`, plus the Ollama stand-in and a demo alias and key
	@$(PY) -m tollgate_dev.cli run --standin

.PHONY: standin
standin: venv ## Serve only the Ollama stand-in on 127.0.0.1:11434 (a test double, not Ollama)
	@$(PY) -m tollgate_dev.standin

.PHONY: migrate
migrate: venv ## Apply the gateway's Alembic migrations to POSTGRES_DSN (or the local Postgres)
	@$(PY) -m tollgate_dev.cli migrate

.PHONY: lint
lint: venv ## ruff + mypy strict
	@.venv/bin/ruff check .
	@.venv/bin/ruff format --check .
	@.venv/bin/mypy

.PHONY: fmt
fmt: venv ## Format and auto-fix with ruff
	@.venv/bin/ruff format .
	@.venv/bin/ruff check --fix .

.PHONY: test
test: venv ## The whole suite: lint, type checks, unit, integration (real Postgres, Valkey, Kubernetes)
	@hack/test.sh

.PHONY: k8s-binaries
k8s-binaries: ## Build (or reuse) etcd, kube-apiserver, controller-manager, scheduler, kwok, helm, kubectl
	@hack/build-k8s.sh

.PHONY: cluster-up
cluster-up: venv k8s-binaries ## Start the local control plane (etcd, apiserver, controller-manager, scheduler, kwok)
	@$(PY) -m tollgate_dev.cluster up

.PHONY: cluster-down
cluster-down: venv ## Stop the local control plane
	@$(PY) -m tollgate_dev.cluster down

.PHONY: cluster-env
cluster-env: ## Print the `export KUBECONFIG=…` line for the local control plane
	@$(PY) -m tollgate_dev.cluster env

.PHONY: clean
clean: ## Remove local state (.state) and the environment (.venv); the build cache stays
	rm -rf .state .venv
