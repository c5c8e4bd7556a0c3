"""Issue 9: the results finalizer set by the API server as a task is created.

The chart's MutatingAdmissionPolicy, installed by Helm on the real API server: a task created
in a namespace the release watches carries the operator's finalizer from its first version
(no operator PATCH needed); a task elsewhere carries none, since no operator would ever
remove it there.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import yaml
from devcluster.cluster import Cluster, ClusterError
from evaluation_operator import naming

from tests.chart.chart import CHART, KUBE_VERSION, find, helm, one, set_args
from tests.chart.conftest import new_namespace, release, unique
from tests.integration.conftest import task_manifest

POLICY_API = "admissionregistration.k8s.io/v1/MutatingAdmissionPolicy"


def _render(values: dict[str, Any] | None = None, with_api: bool = True
            ) -> list[dict[str, Any]]:
    """The chart as Helm renders it for a cluster that serves (or not) the policy's API."""
    text = helm("template", "eval", str(CHART), "--namespace", "evaluation-system",
                "--kube-version", KUBE_VERSION, *(["--api-versions", POLICY_API] if with_api
                                                  else []), *set_args(values)).stdout
    return [doc for doc in yaml.safe_load_all(text) if doc]


def test_policy_sets_the_operators_own_finalizer() -> None:
    policy = one(_render(), "MutatingAdmissionPolicy")
    assert policy["spec"]["failurePolicy"] == "Ignore"  # else the operator adds it
    rules = policy["spec"]["matchConstraints"]["resourceRules"]
    assert rules == [{"apiGroups": [naming.GROUP], "apiVersions": ["*"],
                      "operations": ["CREATE"], "resources": [naming.PLURAL]}]
    expression = policy["spec"]["mutations"][0]["applyConfiguration"]["expression"]
    assert f'finalizers: ["{naming.FINALIZER}"]' in expression


def test_binding_covers_only_the_watched_namespaces() -> None:
    binding = one(_render({"watchNamespaces": ["team-a", "team-b"]}),
                  "MutatingAdmissionPolicyBinding")
    selector = binding["spec"]["matchResources"]["namespaceSelector"]
    assert selector["matchExpressions"][0]["values"] == ["team-a", "team-b"]
    everywhere = one(_render(), "MutatingAdmissionPolicyBinding")
    assert "matchResources" not in everywhere["spec"]


@pytest.mark.parametrize(("values", "with_api"), [({"finalizerPolicy": {"enabled": False}}, True),
                                                  (None, False)])
def test_no_policy_when_disabled_or_not_served(values: dict[str, Any] | None,
                                               with_api: bool) -> None:
    objects = _render(values, with_api)
    assert not find(objects, "MutatingAdmissionPolicy")
    assert not find(objects, "MutatingAdmissionPolicyBinding")


def _create(cluster: Cluster, namespace: str, name: str) -> dict[str, Any]:
    manifest = task_manifest(name)
    manifest["metadata"]["namespace"] = namespace
    created = cluster.kubectl("create", "-o", "json", "-f", "-", input=json.dumps(manifest))
    return dict(json.loads(created.stdout))


@pytest.mark.cluster
def test_tasks_in_watched_namespaces_are_created_with_the_finalizer(
        cluster: Cluster, namespaces: list[str]) -> None:
    release_ns = new_namespace(cluster, namespaces, "eval-sys")
    watched = new_namespace(cluster, namespaces, "watched")
    elsewhere = new_namespace(cluster, namespaces, "elsewhere")
    made: list[tuple[str, str]] = []
    try:
        with release(cluster, release_ns, {"watchNamespaces": [watched]}, "--no-hooks"):
            # The API server loads a new policy and its binding within a few seconds.
            def finalized() -> bool:
                name = unique("probe")
                made.append((watched, name))
                try:
                    probe = _create(cluster, watched, name)
                except ClusterError:  # 503 while a new CRD's schema is not yet loaded
                    return False
                return naming.FINALIZER in (probe["metadata"].get("finalizers") or [])
            cluster.wait_until("the finalizer policy to take effect", finalized, timeout=60)

            task = _create(cluster, watched, "first")
            made.append((watched, "first"))
            assert task["metadata"]["finalizers"] == [naming.FINALIZER]
            other = _create(cluster, elsewhere, "first")
            made.append((elsewhere, "first"))
            assert not other["metadata"].get("finalizers")
    finally:
        for namespace, name in made:  # no operator here to remove the finalizer
            cluster.kubectl("patch", naming.PLURAL, name, "-n", namespace, "--type=merge",
                            "-p", '{"metadata":{"finalizers":null}}', check=False)
