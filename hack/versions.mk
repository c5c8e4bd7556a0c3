# Pinned versions of everything the Makefile builds from the Go module proxy.
# Read by the Makefile and by hack/devcluster/tools.py (KEY := value lines only).
KUBERNETES_VERSION := v1.37.2
ETCD_VERSION := v3.7.3
KWOK_VERSION := v0.8.0
HELM_VERSION := v3.22.0
# Kueue: only its LocalQueue CRD, for the tests of a missing spec.scheduling.queueName.
KUEUE_VERSION := v0.17.0
