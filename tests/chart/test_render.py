"""The chart as `helm lint` / `helm template` see it: no cluster needed."""

from __future__ import annotations

import importlib.util
import re
import shutil
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml
from devcluster.tools import REPO_ROOT
from evaluation_operator import config

from tests.chart.chart import (
    CHART,
    KUBE_VERSION,
    env_of,
    find,
    helm,
    one,
    render,
    render_text,
    set_args,
)

SA = "system:serviceaccount"
NAMESPACED_RESOURCES = {"evaluationtasks", "evaluationtasks/status", "jobs", "pods",
                        "configmaps", "events", "localqueues"}


def load_sync_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("sync_chart_crds",
                                                  REPO_ROOT / "hack" / "sync-chart-crds.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def operator_container(objects: list[dict[str, Any]]) -> dict[str, Any]:
    deployment = one(objects, "Deployment", "eval-evaluation-operator")
    containers: list[dict[str, Any]] = deployment["spec"]["template"]["spec"]["containers"]
    return next(c for c in containers if c["name"] == "operator")


def rules_of(role: dict[str, Any]) -> set[tuple[str, str, str]]:
    return {(group, resource, verb) for rule in role["rules"] for group in rule["apiGroups"]
            for resource in rule["resources"] for verb in rule["verbs"]}


LEADER_ROLE = "eval-evaluation-operator-leader-election"


def task_roles(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The Roles for handling tasks (not the one for leader election)."""
    return [r for r in find(objects, "Role") if r["metadata"]["name"] != LEADER_ROLE]


# --- lint and CRDs ------------------------------------------------------------------------------


@pytest.mark.parametrize("values", [
    {}, {"watchNamespaces": ["team-a", "team-b"], "minio": {"enabled": True}},
    {"metrics": {"serviceMonitor": {"enabled": True}}, "networkPolicy": {"enabled": False}},
], ids=["defaults", "namespaced-with-minio", "servicemonitor"])
def test_helm_lint_is_clean(values: dict[str, Any]) -> None:
    result = helm("lint", "--strict", str(CHART), "--kube-version", KUBE_VERSION,
                  *set_args(values))
    assert "1 chart(s) linted, 0 chart(s) failed" in result.stdout


def test_chart_crds_are_generated_from_crds_dir() -> None:
    problems = load_sync_script().drift()
    assert not problems, (f"the chart's CRDs drifted from crds/: {problems}; "
                          "run `make chart-crds`")


def test_drift_check_notices_an_edited_copy(tmp_path: Path) -> None:
    sync = load_sync_script()
    source, chart = tmp_path / "crds", tmp_path / "chart-crds"
    shutil.copytree(REPO_ROOT / "crds", source)
    assert sync.sync(source, chart) and not sync.drift(source, chart)
    copy = next(chart.glob("*.yaml"))
    copy.write_text(copy.read_text() + "# edited by hand\n")
    (chart / "old.yaml").write_text("kind: CustomResourceDefinition\n")
    problems = sync.drift(source, chart)
    assert f"{copy.name}: differs from crds/{copy.name}" in problems
    assert "old.yaml: in the chart but not in crds/" in problems
    sync.sync(source, chart)
    assert not sync.drift(source, chart) and not (chart / "old.yaml").exists()


def test_chart_crd_is_the_evaluationtask_crd() -> None:
    docs = [d for p in sorted((CHART / "crds").glob("*.yaml"))
            for d in yaml.safe_load_all(p.read_text()) if d]
    assert [d["metadata"]["name"] for d in docs] == ["evaluationtasks.evaluation.dev"]


# --- the Deployment -----------------------------------------------------------------------------


def test_two_replicas_elect_a_leader_on_a_lease_and_roll() -> None:
    objects = render()
    deployment = one(objects, "Deployment", "eval-evaluation-operator")
    assert deployment["spec"]["replicas"] == 2
    # A new pod starts as a standby before an old one goes.
    assert deployment["spec"]["strategy"] == {
        "type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}
    env = env_of(operator_container(objects))
    assert env["EVAL_LEADER_ELECTION_LEASE"] == "eval-evaluation-operator"
    assert env["EVAL_LEADER_ELECTION_NAMESPACE"] == "evaluation-system"
    assert env["EVAL_LEADER_ELECTION_IDENTITY"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    settings = config.OperatorSettings.from_env(
        {k: v for k, v in env.items() if isinstance(v, str)})
    assert settings.leader_election_lease == "eval-evaluation-operator"
    assert (settings.lease_duration_seconds, settings.lease_renew_deadline_seconds,
            settings.lease_retry_period_seconds) == (15, 10, 2)
    pdb = one(objects, "PodDisruptionBudget", "eval-evaluation-operator")
    assert pdb["spec"]["maxUnavailable"] == 1
    assert pdb["spec"]["selector"] == deployment["spec"]["selector"]
    anti = deployment["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"]
    term = anti["preferredDuringSchedulingIgnoredDuringExecution"][0]["podAffinityTerm"]
    assert term["topologyKey"] == "kubernetes.io/hostname"
    assert term["labelSelector"] == deployment["spec"]["selector"]


def test_own_affinity_replaces_the_default_anti_affinity() -> None:
    mine = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
        "nodeSelectorTerms": [{"matchExpressions": [
            {"key": "pool", "operator": "In", "values": ["system"]}]}]}}}
    deployment = one(render({"affinity": mine}), "Deployment")
    assert deployment["spec"]["template"]["spec"]["affinity"] == mine


def test_without_leader_election_one_operator_is_replaced_not_rolled() -> None:
    objects = render({"replicas": 1, "leaderElection": {"enabled": False}})
    deployment = one(objects, "Deployment", "eval-evaluation-operator")
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    assert "EVAL_LEADER_ELECTION_LEASE" not in env_of(operator_container(objects))
    assert not find(objects, "PodDisruptionBudget") and not find(objects, "Role")
    assert "affinity" not in deployment["spec"]["template"]["spec"]


def test_replicas_without_leader_election_are_refused() -> None:
    result = render_text({"replicas": 2, "leaderElection": {"enabled": False}}, check=False)
    assert result.returncode != 0
    assert "replicas > 1 needs leaderElection.enabled" in result.stderr


def test_lease_timings_that_could_overlap_are_refused() -> None:
    """A leader must give up (renewDeadline) before a standby may take over (leaseDuration)."""
    result = render_text({"leaderElection": {"leaseDurationSeconds": 10,
                                             "renewDeadlineSeconds": 10}}, check=False)
    assert result.returncode != 0
    assert "retryPeriodSeconds < renewDeadlineSeconds < leaseDurationSeconds" in result.stderr


def test_probes_use_kopfs_health_endpoint() -> None:
    container = operator_container(render({"health": {"port": 8181}}))
    assert "--liveness=http://0.0.0.0:8181/healthz" in container["args"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["health"] == 8181
    for probe in ("livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "health"}


def test_operator_pod_meets_the_restricted_pod_security_standard() -> None:
    for objects in (render(), render({"minio": {"enabled": True}})):
        for workload in find(objects, "Deployment") + find(objects, "Job"):
            pod = workload["spec"]["template"]["spec"]
            assert pod["securityContext"]["runAsNonRoot"] is True
            assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
            for container in pod["containers"]:
                sc = container["securityContext"]
                assert sc["allowPrivilegeEscalation"] is False
                assert sc["capabilities"] == {"drop": ["ALL"]}
                assert sc["readOnlyRootFilesystem"] is True
            for volume in pod.get("volumes") or []:
                assert set(volume) - {"name"} <= {"emptyDir", "configMap", "secret",
                                                  "projected", "persistentVolumeClaim"}


def test_resource_requests_are_set() -> None:
    resources = operator_container(render())["resources"]
    assert resources["requests"]["cpu"] and resources["requests"]["memory"]
    assert resources["limits"]["memory"]


def test_values_reach_the_operator_as_the_settings_it_reads() -> None:
    """The rendered env, read by the operator's own config code, gives back the values."""
    container = operator_container(render({
        "watchNamespaces": ["team-a", "team-b"],
        "s3": {"endpoint": "https://s3.example.com", "runnerEndpoint": "http://minio:9000",
               "bucket": "my-results", "region": "eu-west-1", "prefix": "evals",
               "taskCredentialsSecret": "team-s3", "credentialsSecret": "op-s3"},
        "runner": {"image": "registry.example/runner:9", "pullPolicy": "Always",
                   "gpuResource": "amd.com/gpu", "progressIntervalSeconds": 7},
        "purgeRetryMaxSeconds": 90, "metrics": {"port": 9102},
    }))
    env = env_of(container)
    plain = {k: v for k, v in env.items() if isinstance(v, str)}
    settings = config.OperatorSettings.from_env(plain)
    assert settings.namespaces == ("team-a", "team-b")
    assert (settings.s3_endpoint, settings.runner_s3_endpoint) == (
        "https://s3.example.com", "http://minio:9000")
    assert (settings.s3_bucket, settings.s3_region, settings.s3_prefix) == (
        "my-results", "eu-west-1", "evals")
    assert settings.s3_credentials_secret == "team-s3"
    assert (settings.runner_image, settings.runner_image_pull_policy, settings.gpu_resource) == (
        "registry.example/runner:9", "Always", "amd.com/gpu")
    assert settings.progress_interval_seconds == 7
    assert settings.purge_retry_max_seconds == 90
    assert settings.metrics_port == 9102
    # The operator's own credentials come from a Secret by reference, never as literals.
    assert env["AWS_ACCESS_KEY_ID"] == {"secretKeyRef": {"name": "op-s3",
                                                         "key": "AWS_ACCESS_KEY_ID"}}
    assert env["AWS_SECRET_ACCESS_KEY"]["secretKeyRef"]["name"] == "op-s3"


def test_every_operator_setting_is_exposed_by_the_chart() -> None:
    """A setting the operator reads but the chart never sets cannot be configured by users;
    a variable the chart sets that the operator never reads is a typo."""
    source = Path(config.__file__).read_text()
    operator_vars = set(re.findall(r'"(EVAL_[A-Z0-9_]+)"', source))
    chart_vars = {name for name in env_of(operator_container(render())) if
                  name.startswith("EVAL_")}
    assert chart_vars == operator_vars


def test_metrics_off_means_no_port_no_service() -> None:
    objects = render({"metrics": {"enabled": False}})
    container = operator_container(objects)
    assert env_of(container)["EVAL_METRICS_PORT"] == "0"
    assert "metrics" not in {p["name"] for p in container["ports"]}
    assert not find(objects, "Service")


def test_workload_identity_install_has_no_credentials_env() -> None:
    role = {"eks.amazonaws.com/role-arn": "arn:aws:iam::1:role/eval"}
    objects = render({"s3": {"credentialsSecret": ""}, "serviceAccount": {"annotations": role}})
    assert not {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} & set(
        env_of(operator_container(objects)))
    sa = one(objects, "ServiceAccount")
    assert sa["metadata"]["annotations"] == role


# --- RBAC ---------------------------------------------------------------------------------------


def test_cluster_wide_install_binds_a_clusterrole_to_the_serviceaccount() -> None:
    objects = render()
    sa = one(objects, "ServiceAccount")["metadata"]
    assert not task_roles(objects)
    assert [b["metadata"]["name"] for b in find(objects, "RoleBinding")] == [LEADER_ROLE]
    role = one(objects, "ClusterRole", "eval-evaluation-operator")
    assert {r for _, r, _ in rules_of(role)} == NAMESPACED_RESOURCES
    # ...and reading CRD definitions (Kopf notices CRDs coming and going), nothing more.
    reader = one(objects, "ClusterRole", "eval-evaluation-operator-crd-reader")
    assert rules_of(reader) == {
        ("apiextensions.k8s.io", "customresourcedefinitions", v) for v in ("get", "list", "watch")}
    binding = one(objects, "ClusterRoleBinding", "eval-evaluation-operator")
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": sa["name"],
                                    "namespace": "evaluation-system"}]
    assert env_of(operator_container(objects))["EVAL_NAMESPACES"] == ""


def test_namespaced_install_grants_only_in_watched_namespaces() -> None:
    objects = render({"watchNamespaces": ["team-a", "team-b"]})
    roles = task_roles(objects)
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["team-a", "team-b"]
    assert sorted(b["metadata"]["namespace"] for b in find(objects, "RoleBinding")
                  if b["metadata"]["name"] != LEADER_ROLE) == ["team-a", "team-b"]
    assert {r for role in roles for _, r, _ in rules_of(role)} == NAMESPACED_RESOURCES
    # Nothing cluster-wide at all.
    assert not find(objects, "ClusterRole") and not find(objects, "ClusterRoleBinding")
    assert env_of(operator_container(objects))["EVAL_NAMESPACES"] == "team-a,team-b"


@pytest.mark.parametrize("values", [{}, {"watchNamespaces": ["team-a"]}],
                         ids=["cluster-wide", "namespaced"])
def test_rbac_is_least_privilege(values: dict[str, Any]) -> None:
    objects = render(values)
    granted = {rule for role in task_roles(objects) + find(objects, "ClusterRole")
               for rule in rules_of(role)}
    assert not any(r == "secrets" for _, r, _ in granted), "the operator never reads Secrets"
    assert not any("*" in (g, r, v) for g, r, v in granted), "no wildcards"
    assert not any(v in ("escalate", "bind", "impersonate", "deletecollection", "update")
                   for _, _, v in granted)
    assert not any(r in ("namespaces", "nodes", "serviceaccounts", "roles", "rolebindings")
                   for _, r, _ in granted)
    # Pods, events and ConfigMaps: never changed or deleted.
    assert {v for _, r, v in granted if r == "pods"} == {"get", "list", "watch"}
    assert {v for _, r, v in granted if r == "configmaps"} == {"create", "get"}
    # Events: posted on tasks; listed only to read the Job controller's FailedCreate.
    assert {v for _, r, v in granted if r == "events"} == {"create", "list"}
    # Kueue: whether a task's LocalQueue exists, nothing more.
    assert {(g, v) for g, r, v in granted if r == "localqueues"} == {("kueue.x-k8s.io", "get")}


@pytest.mark.parametrize("values", [{}, {"watchNamespaces": ["team-a"]}],
                         ids=["cluster-wide", "namespaced"])
def test_leader_election_may_touch_its_own_lease_only(values: dict[str, Any]) -> None:
    objects = render(values)
    role = one(objects, "Role", LEADER_ROLE)
    assert role["metadata"]["namespace"] == "evaluation-system"
    # create cannot name an object that does not exist yet; reading and renewing can.
    assert sorted((tuple(r["verbs"]), tuple(r.get("resourceNames") or ())) for r in role["rules"]
                  ) == [(("create",), ()), (("get", "update"), ("eval-evaluation-operator",))]
    assert {(g, r) for g, r, _ in rules_of(role)} == {("coordination.k8s.io", "leases")}
    binding = one(objects, "RoleBinding", LEADER_ROLE)
    assert binding["roleRef"]["name"] == LEADER_ROLE
    assert binding["subjects"][0]["name"] == one(objects, "ServiceAccount")["metadata"]["name"]


def test_rbac_can_be_left_to_the_cluster_admin() -> None:
    objects = render({"rbac": {"create": False}, "serviceAccount": {"create": False,
                                                                    "name": "evaluator"}})
    assert not [o for o in objects if o["kind"].endswith(("Role", "RoleBinding"))]
    assert not find(objects, "ServiceAccount")
    deployment = one(objects, "Deployment")
    assert deployment["spec"]["template"]["spec"]["serviceAccountName"] == "evaluator"


# --- values.schema.json -------------------------------------------------------------------------


@pytest.mark.parametrize(("values", "error"), [
    ({"s3": {"bucket": "Results_2024"}}, "at '/s3/bucket'"),
    ({"replicas": 0}, "at '/replicas'"),
    ({"leaderElection": {"leaseDurationSeconds": "15s"}}, "at '/leaderElection/leaseDuration"),
    ({"watchNamespaces": "team-a"}, "at '/watchNamespaces': got string, want array"),
    ({"watchNamespaces": ["Team_A"]}, "at '/watchNamespaces/0'"),
    ({"runnr": {"image": "x"}}, "additional properties 'runnr' not allowed"),
    ({"runner": {"gpuResource": "nvidia gpu"}}, "at '/runner/gpuResource'"),
    ({"runner": {"progressIntervalSeconds": 0}}, "at '/runner/progressIntervalSeconds'"),
    ({"image": {"pullPolicy": "Sometimes"}}, "at '/image/pullPolicy'"),
    ({"s3": {"endpoint": "minio:9000"}}, "at '/s3/endpoint'"),
    ({"metrics": {"port": 70000}}, "at '/metrics/port'"),
    ({"minio": {"enabled": True, "rootPassword": "short"}}, "at '/minio/rootPassword'"),
])
def test_wrong_values_fail_with_the_offending_path(values: dict[str, Any], error: str) -> None:
    result = render_text(values, check=False)
    assert result.returncode != 0
    assert "values don't meet the specifications of the schema" in result.stderr
    assert error in result.stderr, result.stderr


def test_inconsistent_values_fail_with_an_explanation() -> None:
    result = render_text({"minio": {"enabled": True}, "s3": {"credentialsSecret": ""}},
                         check=False)
    assert result.returncode != 0 and "minio.enabled needs s3.credentialsSecret" in result.stderr
    result = render_text({"serviceAccount": {"create": False}}, check=False)
    assert result.returncode != 0 and "serviceAccount.name is required" in result.stderr


# --- MinIO, metrics, NetworkPolicy --------------------------------------------------------------


def test_dev_minio_is_wired_to_the_operator() -> None:
    objects = render({"minio": {"enabled": True, "rootPassword": "dev-password"}})
    env = env_of(operator_container(objects))
    assert env["EVAL_S3_ENDPOINT"] == "http://eval-evaluation-operator-minio.evaluation-system.svc:9000"
    secret = one(objects, "Secret", "evaluation-operator-s3")
    assert secret["stringData"] == {"AWS_ACCESS_KEY_ID": "minioadmin",
                                    "AWS_SECRET_ACCESS_KEY": "dev-password"}
    assert env["AWS_SECRET_ACCESS_KEY"]["secretKeyRef"]["name"] == "evaluation-operator-s3"
    service = one(objects, "Service", "eval-evaluation-operator-minio")
    minio = one(objects, "Deployment", "eval-evaluation-operator-minio")
    assert service["spec"]["selector"] == minio["spec"]["selector"]["matchLabels"]
    bucket_job = one(objects, "Job")
    assert "mc mb --ignore-existing local/eval-results" in bucket_job["spec"]["template"][
        "spec"]["containers"][0]["args"][0]
    assert "post-install" in bucket_job["metadata"]["annotations"]["helm.sh/hook"]
    # The metrics Service selects the operator only, never MinIO.
    metrics = one(objects, "Service", "eval-evaluation-operator-metrics")
    assert metrics["spec"]["selector"]["app.kubernetes.io/component"] == "operator"


def test_minio_password_is_random_when_not_given() -> None:
    first, second = (one(render({"minio": {"enabled": True}}), "Secret") for _ in range(2))
    password = first["stringData"]["AWS_SECRET_ACCESS_KEY"]
    assert len(password) >= 16 and password != second["stringData"]["AWS_SECRET_ACCESS_KEY"]


def test_servicemonitor_scrapes_the_metrics_service() -> None:
    objects = render({"metrics": {"serviceMonitor": {"enabled": True, "labels": {
        "release": "prometheus"}}}})
    monitor = one(objects, "ServiceMonitor")
    service = one(objects, "Service", "eval-evaluation-operator-metrics")
    assert monitor["metadata"]["labels"]["release"] == "prometheus"
    selector = monitor["spec"]["selector"]["matchLabels"]
    assert selector.items() <= service["metadata"]["labels"].items()
    assert monitor["spec"]["endpoints"][0]["port"] == service["spec"]["ports"][0]["name"]
    assert not find(render(), "ServiceMonitor")


def test_networkpolicy_admits_scrapes_and_allows_dns_apiserver_and_s3() -> None:
    objects = render({"minio": {"enabled": True}})
    policy = one(objects, "NetworkPolicy")
    deployment = one(objects, "Deployment", "eval-evaluation-operator")
    assert policy["spec"]["podSelector"]["matchLabels"] == deployment["spec"]["selector"][
        "matchLabels"]
    assert policy["spec"]["policyTypes"] == ["Ingress", "Egress"]
    ingress_ports = {p["port"] for rule in policy["spec"]["ingress"] for p in rule["ports"]}
    assert ingress_ports == {"metrics", "health"}
    egress_ports = {p["port"] for rule in policy["spec"]["egress"] for p in rule["ports"]}
    assert {53, 443, 6443, 9000} <= egress_ports
    minio_rule = policy["spec"]["egress"][-1]
    assert minio_rule["to"][0]["podSelector"]["matchLabels"]["app.kubernetes.io/name"] == "minio"
    assert not find(render({"networkPolicy": {"enabled": False}}), "NetworkPolicy")


def test_every_object_carries_the_standard_labels() -> None:
    for obj in render({"minio": {"enabled": True}, "watchNamespaces": ["team-a"]}):
        labels = obj["metadata"].get("labels") or {}
        assert labels.get("app.kubernetes.io/managed-by") == "Helm", obj["metadata"]["name"]
        assert labels.get("app.kubernetes.io/instance") == "eval"
        assert labels.get("helm.sh/chart") == "evaluation-operator-0.1.0"
