# Tollgate — every target installs what it needs itself. `make help` lists them.
SHELL := /bin/bash
.DEFAULT_GOAL := help
PY := .venv/bin/python
export TOLLGATE_CACHE ?= $(or $(XDG_CACHE_HOME),$(HOME)/.cache)/tollgate
IMAGE_REGISTRY ?= ghcr.io/tollgate-dev
IMAGE_TAG ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
# podman (rootful, runc) or docker; local bases are built here from Debian packages, official
# ones are the Dockerfiles' defaults from their registries.
CONTAINER_ENGINE ?= podman
IMAGE_BASES ?= local

.PHONY: help
help: ## List every target with one line each
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z0-9_-]+:.*## / {printf "  \033[36m%-16s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

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

.PHONY: run-cluster
run-cluster: venv ## `make run-standin` plus the local control plane (storage, kube-proxy and Ollama roles played), the operator and manifests/samples/ (REAL_OLLAMA=1: the real Ollama on Pod IPs)
	@$(PY) -m tollgate_dev.cli run --standin --cluster $(if $(REAL_OLLAMA),--real-ollama)

.PHONY: standin
standin: venv ## Serve only the Ollama stand-in on 127.0.0.1:11434 (a test double, not Ollama)
	@$(PY) -m tollgate_standin

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

.PHONY: bench
bench: venv ## Benchmarks: Tollgate vs upstream, Caddy, a minimal proxy and LiteLLM; results in bench/results/
	@hack/bench.sh

.PHONY: k8s-binaries
k8s-binaries: ## Build (or reuse) etcd, kube-apiserver, controller-manager, scheduler, kwok, helm, kubectl
	@hack/build-k8s.sh

.PHONY: cluster-up
cluster-up: venv k8s-binaries ## Start the local control plane (etcd, apiserver, controller-manager, scheduler, kwok)
	@$(PY) -m tollgate_dev.controlplane.cluster up

.PHONY: cluster-down
cluster-down: venv ## Stop the local control plane
	@$(PY) -m tollgate_dev.controlplane.cluster down

.PHONY: cluster-env
cluster-env: ## Print the `export KUBECONFIG=…` line for the local control plane
	@$(PY) -m tollgate_dev.controlplane.cluster env

.PHONY: crds
crds: ## Apply the CRDs from crds/ to the cluster in KUBECONFIG
	@kubectl apply --server-side -f crds/

.PHONY: operator
operator: venv ## Run the operator locally against KUBECONFIG and POSTGRES_DSN (every namespace)
	@TOLLGATE_GATEWAY_URL=$${TOLLGATE_GATEWAY_URL:-http://127.0.0.1:8000} \
	 TOLLGATE_BACKEND_URL_TEMPLATE=$${TOLLGATE_BACKEND_URL_TEMPLATE:-http://\{cluster_ip\}:\{port\}} \
	 $(PY) -m tollgate_operator --all-namespaces

.PHONY: samples
samples: ## Apply manifests/samples/ (namespace tollgate-demo) to the cluster in KUBECONFIG
	@kubectl apply -f manifests/samples/

.PHONY: sync-crds
sync-crds: ## Copy crds/*.yaml into charts/tollgate/crds/ (a test checks they are identical)
	@hack/chart/sync-crds.sh

.PHONY: chart-lint
chart-lint: k8s-binaries ## helm lint --strict the chart with its defaults and each charts/tollgate/ci/ scenario
	@hack/chart/lint.sh

.PHONY: chart-test
chart-test: venv k8s-binaries ## The chart's tests: render, schema, promtool, dashboards, Caddy streaming, installs
	@hack/ensure-debs.sh prometheus
	@.venv/bin/pytest tests/chart

.PHONY: manifests
manifests: k8s-binaries ## Sync the chart's CRDs and render manifests/install/tollgate.yaml
	@hack/chart/sync-crds.sh
	@hack/chart/render.sh

.PHONY: images
images: ## Build the gateway, operator and Ollama images (CONTAINER_ENGINE=podman|docker, IMAGE_BASES=local|official, IMAGE_REGISTRY, IMAGE_TAG)
	@CONTAINER_ENGINE=$(CONTAINER_ENGINE) IMAGE_BASES=$(IMAGE_BASES) IMAGE_REGISTRY=$(IMAGE_REGISTRY) \
	 IMAGE_TAG=$(IMAGE_TAG) hack/build-images.sh

.PHONY: base-images
base-images: ## Build only the local base images (Debian + Python, uv, Node.js, Ollama) the images build on
	@CONTAINER_ENGINE=$(CONTAINER_ENGINE) hack/build-base-images.sh

.PHONY: images-push
images-push: ## Push the images `make images` built to IMAGE_REGISTRY
	@for name in gateway operator ollama; do \
	  $(CONTAINER_ENGINE) push $(IMAGE_REGISTRY)/tollgate-$$name:$(IMAGE_TAG) || exit 1; \
	done

.PHONY: kind-up
kind-up: ## Create the kind cluster of kind-config.yaml (host ports 80/443 for the ingress)
	kind create cluster --config kind-config.yaml

.PHONY: kind-down
kind-down: ## Delete the kind cluster
	kind delete cluster --name tollgate

.PHONY: dev
dev: ## skaffold dev: build both images, deploy the chart with ci/dev-values.yaml, forward :8000
	skaffold dev --port-forward

.PHONY: clean
clean: ## Remove local state (.state) and the environment (.venv); the build cache stays
	rm -rf .state .venv
