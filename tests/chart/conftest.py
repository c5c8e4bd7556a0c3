"""The Helm chart's tests need the Helm binary the Makefile builds (`make tools`)."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from devcluster.cluster import Cluster

from tests.chart.chart import CHART, helm, helm_path, set_args
from tests.support.requirements import require


@pytest.fixture(autouse=True)
def _needs_helm() -> None:
    require(helm_path().is_file(), f"helm not built at {helm_path()} (run `make tools`)")


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


@pytest.fixture
def namespaces(cluster: Cluster) -> Iterator[list[str]]:
    """Create namespaces on demand; delete them at the end."""
    created: list[str] = []
    yield created
    for name in created:
        cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


def new_namespace(cluster: Cluster, created: list[str], prefix: str) -> str:
    name = unique(prefix)
    cluster.kubectl("create", "namespace", name)
    created.append(name)
    return name


@contextlib.contextmanager
def release(cluster: Cluster, namespace: str, values: dict[str, Any], *extra: str
            ) -> Iterator[str]:
    """The chart installed with these values (extra: Helm flags); uninstalled afterwards."""
    name = unique("eval")
    helm("install", name, str(CHART), "--namespace", namespace, *set_args(values), *extra,
         kubeconfig=cluster.kubeconfig)
    try:
        yield name
    finally:
        helm("uninstall", name, "--namespace", namespace, "--wait", "--timeout", "60s",
             kubeconfig=cluster.kubeconfig, check=False)
