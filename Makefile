# evaluation-operator: build, run and test.
#   make test          install everything, build the control plane, run the whole test suite
#   make run           a local control plane (etcd, apiserver, controller-manager, scheduler,
#                      KWOK GPU nodes) with the CRD, a local S3, and the operator running
#   make cluster-up    the local control plane alone; prints `export KUBECONFIG=...`
SHELL := /bin/bash
.DEFAULT_GOAL := help

include hack/versions.mk

# Built binaries live outside the clone, keyed by version, so CI and later checkouts reuse them.
TOOLS_DIR ?= $(HOME)/.cache/evaluation-operator/bin
K8S_BIN := $(TOOLS_DIR)/kubernetes-$(KUBERNETES_VERSION)
ETCD_BIN := $(TOOLS_DIR)/etcd-$(ETCD_VERSION)
KWOK_BIN := $(TOOLS_DIR)/kwok-$(KWOK_VERSION)
HELM_BIN := $(TOOLS_DIR)/helm-$(HELM_VERSION)

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=
CLUSTER_NAME ?= evaluation-dev
CLUSTER_DIR ?= $(CURDIR)/.cluster

export GOFLAGS := -mod=mod -buildvcs=false
export CGO_ENABLED := 0

K8S_VERSION_PKGS := k8s.io/component-base/version k8s.io/client-go/pkg/version
K8S_MINOR := $(word 2,$(subst ., ,$(KUBERNETES_VERSION)))
K8S_LDFLAGS := -s -w $(foreach p,$(K8S_VERSION_PKGS),-X $(p).gitVersion=$(KUBERNETES_VERSION) \
	-X $(p).gitMajor=1 -X $(p).gitMinor=$(K8S_MINOR) -X $(p).gitTreeState=clean \
	-X $(p).buildDate=1970-01-01T00:00:00Z)

.PHONY: help
help:  ## list targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-18s %s\n", $$1, $$2}'

# --- Python -------------------------------------------------------------------------------
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[runner,lm-eval,test,dev]"
	touch $@

.PHONY: venv
venv: $(VENV)/.installed  ## Python virtualenv with runtime, runner, test and dev dependencies

# --- Control plane from the Go module proxy ----------------------------------------------
$(K8S_BIN)/.built: hack/build/kubernetes/go.mod hack/build/kubernetes/go.sum
	mkdir -p $(K8S_BIN)
	cd hack/build/kubernetes && go build -trimpath -ldflags '$(K8S_LDFLAGS)' -o $(K8S_BIN)/ \
		k8s.io/kubernetes/cmd/kube-apiserver \
		k8s.io/kubernetes/cmd/kube-controller-manager \
		k8s.io/kubernetes/cmd/kube-scheduler
	$(K8S_BIN)/kube-apiserver --version | grep -qx 'Kubernetes $(KUBERNETES_VERSION)'
	touch $@

$(ETCD_BIN)/.built: hack/build/etcd/go.mod hack/build/etcd/go.sum
	mkdir -p $(ETCD_BIN)
	cd hack/build/etcd && go build -trimpath -ldflags '-s -w' -o $(ETCD_BIN)/etcd go.etcd.io/etcd/server/v3
	touch $@

$(KWOK_BIN)/.built:
	mkdir -p $(KWOK_BIN)
	GOBIN=$(KWOK_BIN) go install -ldflags '-s -w' \
		sigs.k8s.io/kwok/cmd/kwok@$(KWOK_VERSION) sigs.k8s.io/kwok/cmd/kwokctl@$(KWOK_VERSION)
	touch $@

$(HELM_BIN)/.built:
	mkdir -p $(HELM_BIN)
	GOBIN=$(HELM_BIN) go install -ldflags '-s -w' helm.sh/helm/v3/cmd/helm@$(HELM_VERSION)
	touch $@

.PHONY: tools
tools: $(K8S_BIN)/.built $(ETCD_BIN)/.built $(KWOK_BIN)/.built $(HELM_BIN)/.built  ## build kube-apiserver, controller-manager, scheduler, etcd, kwok, helm (cached)

# --- Local cluster ------------------------------------------------------------------------
.PHONY: cluster-up
cluster-up: venv tools  ## start a local control plane with GPU nodes and the CRD
	$(PY) -m tests.support.cluster up --name $(CLUSTER_NAME) --dir $(CLUSTER_DIR) --install-crds

.PHONY: run
run: cluster-up  ## the operator against the local cluster, with a local S3 (Ctrl-C stops it)
	$(PY) hack/run_local.py

.PHONY: cluster-down
cluster-down: venv  ## stop the local control plane and remove its state
	$(PY) -m tests.support.cluster down --name $(CLUSTER_NAME) --dir $(CLUSTER_DIR)

.PHONY: kind-test
kind-test: venv tools  ## the same suite on a kind cluster (needs Docker and kind on PATH)
	EVAL_TEST_CLUSTER=kind $(PY) -m pytest $(PYTEST_ARGS)

# --- Checks -------------------------------------------------------------------------------
.PHONY: chart-crds
chart-crds: venv  ## regenerate the chart's copy of the CRDs from crds/
	$(PY) hack/sync-chart-crds.py

.PHONY: lint
lint: venv  ## ruff, mypy --strict, and the chart's CRDs in step with crds/
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy
	$(PY) hack/sync-chart-crds.py --check

.PHONY: test
test: venv tools  ## everything: lint, unit, runner, integration (real control plane), chart
	$(MAKE) lint
	$(PY) -m pytest $(PYTEST_ARGS)

.PHONY: bench
bench: venv  ## benchmarks (print figures)
	$(PY) bench/runner_throughput.py

.PHONY: bench-operator
bench-operator: venv tools  ## the operator at 1,000 tasks against a bare client (minutes; TASKS=N)
	$(PY) bench/operator_scale.py --tasks $(or $(TASKS),1000)

.PHONY: clean
clean:  ## remove the virtualenv and local cluster state (not the cached binaries)
	-$(MAKE) cluster-down
	rm -rf $(VENV) $(CLUSTER_DIR)
