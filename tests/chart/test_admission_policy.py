"""Issue 10, finding 4: creating a task must not reveal Secrets its creator may not read.

The chart's ValidatingAdmissionPolicy, installed by Helm on the real API server, judged for
impersonated users (`kubectl --as/--as-group`): who may name which Secret, and which runner
images a task may use.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from devcluster.cluster import Cluster

from tests.chart.chart import find, one, render
from tests.chart.conftest import new_namespace, release
from tests.integration.conftest import task_manifest

TASK_AUTHOR_RULES = [{"apiGroups": ["evaluation.dev"], "resources": ["evaluationtasks"],
                      "verbs": ["create", "get", "list", "watch", "delete"]}]


def _grant(cluster: Cluster, namespace: str, name: str, rules: list[dict[str, Any]],
           subject: dict[str, str]) -> None:
    cluster.apply([
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
         "metadata": {"name": name, "namespace": namespace}, "rules": rules},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
         "metadata": {"name": name, "namespace": namespace},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
         "subjects": [{"apiGroup": "rbac.authorization.k8s.io", **subject}]},
    ])


def _secret_ref_task(name: str, api_key: str | None = None, s3: str | None = None,
                     image: str | None = None) -> dict[str, Any]:
    manifest = task_manifest(name)
    if api_key:
        manifest["spec"]["model"]["endpoint"]["apiKeySecretRef"] = {"name": api_key,
                                                                     "key": "token"}
    if s3:
        manifest["spec"]["output"] = {"s3": {"credentialsSecretRef": {"name": s3}}}
    if image:
        manifest["spec"]["framework"] = {"image": image}
    return manifest


def _create_as(cluster: Cluster, namespace: str, manifest: dict[str, Any], user: str,
               *groups: str) -> tuple[bool, str]:
    args = ["create", "--dry-run=server", "-n", namespace, "-f", "-", f"--as={user}",
            *(f"--as-group={g}" for g in groups)]
    result = cluster.kubectl(*args, input=json.dumps(manifest), check=False)
    return result.returncode == 0, result.stderr


@pytest.fixture
def team(cluster: Cluster, namespaces: list[str]) -> Iterator[tuple[str, str, str]]:
    """A team namespace under the chart's policy, its Secrets, and who may read which."""
    release_ns = new_namespace(cluster, namespaces, "eval-sys")
    team_ns = new_namespace(cluster, namespaces, "team")
    for secret, key in (("llama3-key", "token"), ("db-password", "token"),
                        ("team-s3", "AWS_ACCESS_KEY_ID")):
        cluster.kubectl("create", "secret", "generic", secret, "-n", team_ns,
                        f"--from-literal={key}=planted-{secret}")
    # alice, bob and the group team-a-devs may create tasks; bob may read two Secrets; the
    # group team-a-leads may read every Secret in the namespace.
    for user in ("alice", "bob"):
        _grant(cluster, team_ns, f"author-{user}", TASK_AUTHOR_RULES,
               {"kind": "User", "name": user})
    _grant(cluster, team_ns, "author-devs", TASK_AUTHOR_RULES,
           {"kind": "Group", "name": "team-a-devs"})
    _grant(cluster, team_ns, "bob-keys", [{"apiGroups": [""], "resources": ["secrets"],
                                           "resourceNames": ["llama3-key", "team-s3"],
                                           "verbs": ["get"]}], {"kind": "User", "name": "bob"})
    _grant(cluster, team_ns, "leads-secrets", [{"apiGroups": [""], "resources": ["secrets"],
                                                "verbs": ["get"]}],
           {"kind": "Group", "name": "team-a-leads"})
    values = {"watchNamespaces": [team_ns], "networkPolicy": {"enabled": False},
              "admissionPolicy": {"allowedImages": ["ghcr.io/evaluation-operator",
                                                    "registry.example.com/nlp/"]}}
    with release(cluster, release_ns, values, "--no-hooks") as name:
        # The API server loads a new policy and its binding within a few seconds; until it
        # has loaded a new CRD's schema, the chart's finalizer policy answers creates with a
        # 503 instead (docs/operator.md, Deletion): only the policy's own refusal counts.
        cluster.wait_until("the admission policy to take effect", lambda: "apiKeySecretRef" in (
            _create_as(cluster, team_ns, _secret_ref_task("probe", api_key="db-password"),
                       "alice")[1]), timeout=60)
        yield team_ns, release_ns, name


@pytest.mark.cluster
def test_secret_refs_need_get_on_the_secret(cluster: Cluster,
                                            team: tuple[str, str, str]) -> None:
    namespace, _, _ = team
    allowed, error = _create_as(cluster, namespace,
                                _secret_ref_task("db", api_key="db-password"), "alice")
    assert not allowed
    assert "spec.model.endpoint.apiKeySecretRef.name" in error
    assert "alice may not get the Secret 'db-password'" in error
    assert "planted-" not in error

    allowed, error = _create_as(cluster, namespace,
                                _secret_ref_task("s3", s3="team-s3"), "alice")
    assert not allowed
    assert "spec.output.s3.credentialsSecretRef.name" in error
    assert "'team-s3'" in error

    # No Secret named: the namespace's default S3 Secret is the admin's choice, not alice's.
    assert _create_as(cluster, namespace, task_manifest("plain"), "alice") == (True, "")
    # bob may read llama3-key and team-s3, not db-password.
    assert _create_as(cluster, namespace,
                      _secret_ref_task("ok", api_key="llama3-key", s3="team-s3"), "bob")[0]
    allowed, error = _create_as(cluster, namespace,
                                _secret_ref_task("db", api_key="db-password"), "bob")
    assert not allowed and "bob may not get the Secret 'db-password'" in error
    # Groups count: a member of team-a-devs is refused, one also in team-a-leads is not.
    assert not _create_as(cluster, namespace, _secret_ref_task("db", api_key="db-password"),
                          "carol", "team-a-devs")[0]
    assert _create_as(cluster, namespace, _secret_ref_task("db", api_key="db-password"),
                      "carol", "team-a-devs", "team-a-leads")[0]


@pytest.mark.cluster
def test_runner_images_from_allowed_registries_only(cluster: Cluster,
                                                    team: tuple[str, str, str]) -> None:
    namespace, release_ns, release_name = team
    for image in ("ghcr.io/evaluation-operator/runner:0.2.0",
                  "ghcr.io/evaluation-operator/runner@sha256:" + "b" * 64,
                  "registry.example.com/nlp/runner:1"):
        assert _create_as(cluster, namespace, _secret_ref_task("img", image=image),
                          "alice")[0], image
    for image in ("docker.io/attacker/exfiltrate:latest",
                  "ghcr.io/evaluation-operator-evil/runner:1",
                  "registry.example.com/nlp-other/runner:1"):
        allowed, error = _create_as(cluster, namespace, _secret_ref_task("img", image=image),
                                    "alice")
        assert not allowed, image
        assert f"spec.framework.image: '{image}' is not from an allowed registry" in error
        assert "ghcr.io/evaluation-operator, registry.example.com/nlp/" in error
    # The list is a parameter: an admin edits the ConfigMap, no reinstall.
    params = f"{release_name}-evaluation-operator-task-access"
    cluster.kubectl("patch", "configmap", params, "-n", release_ns, "--type=merge", "-p",
                    json.dumps({"data": {"allowedImages": "*"}}))
    cluster.wait_until("the new image list to apply", lambda: _create_as(
        cluster, namespace, _secret_ref_task("img", image="docker.io/library/python:3.12"),
        "alice")[0], timeout=60)


@pytest.mark.cluster
def test_namespaces_outside_the_release_are_not_judged(
        cluster: Cluster, team: tuple[str, str, str], namespaces: list[str]) -> None:
    other = new_namespace(cluster, namespaces, "other")
    _grant(cluster, other, "author-alice", TASK_AUTHOR_RULES, {"kind": "User", "name": "alice"})
    assert _create_as(cluster, other, _secret_ref_task("db", api_key="db-password"), "alice")[0]


# --- rendering --------------------------------------------------------------------------------


def test_policy_is_on_by_default_and_can_be_turned_off() -> None:
    objects = render()
    policy = one(objects, "ValidatingAdmissionPolicy")
    assert policy["spec"]["failurePolicy"] == "Fail"
    assert policy["spec"]["matchConstraints"]["resourceRules"][0]["operations"] == ["CREATE"]
    assert len(policy["spec"]["validations"]) == 3
    binding = one(objects, "ValidatingAdmissionPolicyBinding")
    assert binding["spec"]["paramRef"]["parameterNotFoundAction"] == "Deny"
    assert "matchResources" not in binding["spec"], "cluster-wide install judges every namespace"
    params = one(objects, "ConfigMap", binding["spec"]["paramRef"]["name"])
    assert params["data"]["allowedImages"] == "ghcr.io/evaluation-operator"
    off = render({"admissionPolicy": {"enabled": False}})
    assert not find(off, "ValidatingAdmissionPolicy")
    assert not find(off, "ValidatingAdmissionPolicyBinding")
    without_secrets = render({"admissionPolicy": {"secretAccess": False}})
    assert len(one(without_secrets, "ValidatingAdmissionPolicy")["spec"]["validations"]) == 1


def test_policy_binding_follows_watch_namespaces() -> None:
    binding = one(render({"watchNamespaces": ["team-a", "team-b"]}),
                  "ValidatingAdmissionPolicyBinding")
    expression = binding["spec"]["matchResources"]["namespaceSelector"]["matchExpressions"][0]
    assert expression == {"key": "kubernetes.io/metadata.name", "operator": "In",
                          "values": ["team-a", "team-b"]}
