# evaluation-operator: build, run and test.
#   make test          install everything, build the control plane, run the whole test suite
#   make run           a local control plane (etcd, apiserver, controller-manager, scheduler,
#                      KWOK GPU nodes) with the CRD, a local S3, and the operator running
#   make cluster-up    the local control plane alone; prints `export KUBECONFIG=...`
#   make images        the runner, operator and pause images as tarballs, without Docker
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
	@grep -hE '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-18s %s\n", $$1, $$2}'

# --- Python -------------------------------------------------------------------------------
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[runner,lm-eval,console,test,dev]"
	touch $@

.PHONY: venv
venv: $(VENV)/.installed  ## Python virtualenv with runtime, runner, test and dev dependencies

# --- Control plane from the Go module proxy ----------------------------------------------
# go.mod alone decides what is built (go.sum only records checksums), so adding go.sum lines
# for a new command does not rebuild the control plane. A cold cache builds the kubelet in the
# same `go build`; a cache built before the kubelet existed gets it from its own stamp below.
$(K8S_BIN)/.built: hack/build/kubernetes/go.mod
	mkdir -p $(K8S_BIN)
	cd hack/build/kubernetes && go build -trimpath -ldflags '$(K8S_LDFLAGS)' -o $(K8S_BIN)/ \
		k8s.io/kubernetes/cmd/kube-apiserver \
		k8s.io/kubernetes/cmd/kube-controller-manager \
		k8s.io/kubernetes/cmd/kube-scheduler \
		k8s.io/kubernetes/cmd/kubelet
	$(K8S_BIN)/kube-apiserver --version | grep -qx 'Kubernetes $(KUBERNETES_VERSION)'
	touch $@ $(K8S_BIN)/.kubelet-built

$(K8S_BIN)/.kubelet-built: $(K8S_BIN)/.built
	test -x $(K8S_BIN)/kubelet || (cd hack/build/kubernetes && \
		go build -trimpath -ldflags '$(K8S_LDFLAGS)' -o $(K8S_BIN)/ k8s.io/kubernetes/cmd/kubelet)
	$(K8S_BIN)/kubelet --version | grep -qx 'Kubernetes $(KUBERNETES_VERSION)'
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

# Kueue's LocalQueue CRD alone (no Kueue controller): the integration tests install it to
# check that a task naming a LocalQueue that does not exist says so (tests/integration/
# test_references.py). From Kueue's Go module, through the module proxy.
KUEUE_CRD := $(TOOLS_DIR)/kueue-$(KUEUE_VERSION)/kueue.x-k8s.io_localqueues.yaml
$(KUEUE_CRD):
	mkdir -p $(dir $@)
	zip=$$(go mod download -json sigs.k8s.io/kueue@$(KUEUE_VERSION) | $(PYTHON) -c \
		'import json, sys; print(json.load(sys.stdin)["Zip"])') && \
	$(PYTHON) -c 'import sys, zipfile; sys.stdout.buffer.write(zipfile.ZipFile(sys.argv[1]).read(sys.argv[2]))' \
		"$$zip" 'sigs.k8s.io/kueue@$(KUEUE_VERSION)/config/components/crd/bases/kueue.x-k8s.io_localqueues.yaml' > $@.tmp
	mv $@.tmp $@

.PHONY: tools
tools: $(K8S_BIN)/.built $(ETCD_BIN)/.built $(KWOK_BIN)/.built $(HELM_BIN)/.built $(KUEUE_CRD)  ## build kube-apiserver, controller-manager, scheduler, etcd, kwok, helm; fetch Kueue's LocalQueue CRD (cached)

.PHONY: kubelet
kubelet: $(K8S_BIN)/.kubelet-built  ## the kubelet for a real node (same Kubernetes version as the control plane; cached)

# --- Real node (containerd + kubelet; see devcluster/node.py) ---------------------------------
# Debian packages, installed only where missing. Needs root (apt-get), as does running the node.
# iptables is here for the check that the node leaves no chains behind, not for the node itself.
NODE_DEBS := containerd runc containernetworking-plugins iptables

.PHONY: node-deps
node-deps:  ## (root) containerd, runc, CNI plugins and iptables from Debian, where missing
	@missing=$$(for p in $(NODE_DEBS); do dpkg-query -W -f='$${Status}' $$p 2>/dev/null \
		| grep -q 'ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		[ "$$(id -u)" = 0 ] || { echo "node-deps: installing" $$missing "needs root"; exit 1; }; \
		apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get \
			-o DPkg::Lock::Timeout=600 install -y -q --no-install-recommends $$missing; \
	fi

.PHONY: e2e
e2e: venv tools kubelet node-deps images  ## (root) the e2e tier: real pods on a real node joined to the local control plane
	$(PY) -m pytest -m e2e tests/e2e $(PYTEST_ARGS)

# --- Images without Docker (hack/images; docs/install.md) ---------------------------------
# Tarballs and the debootstrap base live outside the clone, keyed by their inputs; the clone
# gets the manifest .images/images.json. IMAGES=... builds some; REFRESH_ROOTFS=1 a new base.
IMAGES_CACHE ?= $(HOME)/.cache/evaluation-operator/images
ROOTFS_CACHE ?= $(HOME)/.cache/evaluation-operator/rootfs
IMAGES ?=

.PHONY: image-deps
image-deps:  ## install debootstrap from Debian where missing (apt-get; needs root)
	@command -v debootstrap >/dev/null || { \
		[ "$$(id -u)" = 0 ] || { echo "image-deps: installing debootstrap needs root"; exit 1; }; \
		apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 \
			install -y -q --no-install-recommends debootstrap; }

.PHONY: images
images: venv image-deps  ## runner, runner-lm-eval, operator and pause image tarballs (no Docker)
	$(PY) -m images build --cache $(IMAGES_CACHE) --rootfs-cache $(ROOTFS_CACHE) \
		$(if $(IMAGES),--only $(IMAGES)) $(if $(REFRESH_ROOTFS),--refresh-base)

.PHONY: images-smoke
images-smoke: images  ## (root, containerd) import the images into a throwaway containerd, run each once
	$(PY) -m images smoke

# --- Local cluster ------------------------------------------------------------------------
.PHONY: cluster-up
cluster-up: venv tools  ## start a local control plane with GPU nodes and the CRD
	$(PY) -m devcluster.cluster up --name $(CLUSTER_NAME) --dir $(CLUSTER_DIR) --install-crds

.PHONY: run
# A real evaluation: a real node with the project's images, S3 and a demo model on its bridge,
# the operator in the foreground; `kubectl apply -f .cluster/demo.yaml` runs a real runner pod.
run: cluster-up kubelet node-deps images  ## (root) the operator, a real node running the images, a local S3 and a demo model (Ctrl-C stops it)
	$(PY) hack/run_local.py

.PHONY: cluster-down
cluster-down: venv  ## stop the local control plane and remove its state
	$(PY) -m devcluster.cluster down --name $(CLUSTER_NAME) --dir $(CLUSTER_DIR)

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

# --- Console (kubectl evaluation) ----------------------------------------------------------
# Debian's chromium drives the console's browser tests (Playwright with executable_path;
# `playwright install` is never used). apt-get only when it is missing.
.PHONY: browser
browser:  ## Debian's chromium and chromium-driver for the console's browser tests
	@if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then \
		$(if $(filter 0,$(shell id -u)),,sudo) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(if $(filter 0,$(shell id -u)),,sudo) \
		apt-get install -y -qq --no-install-recommends chromium chromium-driver; fi
	@/usr/bin/chromium --version

.PHONY: console-demo
console-demo: venv  ## two completed tasks with real bundles in the `make run` cluster (run beside it)
	$(PY) hack/console_demo.py

.PHONY: console-screenshots
console-screenshots: venv tools browser  ## regenerate docs/console/*.png (the pages in docs/console.md)
	EVAL_CONSOLE_SCREENSHOTS=$(CURDIR)/docs/console $(PY) -m pytest tests/console/test_browser.py -q

.PHONY: test
# The e2e tier runs in a session of its own (its operator and the integration tier's would both
# handle every namespace). As root (CI) the node's packages, kubelet and images are built
# first; elsewhere the tier skips with one reason, and .ci/run (CI=true) makes that a failure.
E2E_PREREQS := $(if $(filter 0,$(shell id -u)),kubelet node-deps images)
test: venv tools browser $(E2E_PREREQS)  ## everything: lint, unit, runner, integration (real control plane), chart, e2e (real node), console
	$(MAKE) lint
	$(PY) -m pytest $(PYTEST_ARGS)
	$(PY) -m pytest -m e2e tests/e2e $(PYTEST_ARGS)

.PHONY: bench
bench: venv  ## benchmarks (print figures)
	$(PY) bench/runner_throughput.py

# --- The transformers backend's tier (torch) ------------------------------------------------
# A virtualenv of its own: torch's PyPI wheels bring the CUDA libraries (6.3 GB installed),
# which `make test` (and mypy, which would then read torch) never needs. EVAL_REQUIRE_TORCH
# turns a missing torch into a failure; the GPU tests skip without a CUDA device.
LOCAL_MODEL_VENV := .venv-local-model
LOCAL_MODEL_PY := $(LOCAL_MODEL_VENV)/bin/python
$(LOCAL_MODEL_VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(LOCAL_MODEL_VENV)
	$(LOCAL_MODEL_PY) -m pip install --quiet --upgrade pip
	$(LOCAL_MODEL_PY) -m pip install --quiet -e ".[runner,local-model,test]"
	touch $@

.PHONY: test-local-model
test-local-model: $(LOCAL_MODEL_VENV)/.installed  ## the transformers backend's tests (batched = unbatched on the CPU; GPU ones where a GPU is) and its figures, in .venv-local-model (torch: 6.3 GB)
	EVAL_REQUIRE_TORCH=1 $(LOCAL_MODEL_PY) -m pytest tests/runner/test_local_model_batched.py \
		tests/runner/test_local_model.py $(PYTEST_ARGS)
	$(LOCAL_MODEL_PY) bench/local_model_throughput.py

.PHONY: bench-operator
bench-operator: venv tools  ## the operator at 1,000 tasks against a bare client (minutes; TASKS=N)
	$(PY) bench/operator_scale.py --tasks $(or $(TASKS),1000)

.PHONY: clean
clean:  ## remove the virtualenv and local cluster state (not the cached binaries)
	-$(MAKE) cluster-down
	rm -rf $(VENV) $(LOCAL_MODEL_VENV) $(CLUSTER_DIR)
