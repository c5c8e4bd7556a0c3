"""The chart against the real control plane: admitted by the API server, installed by Helm,
and its RBAC proven by running the operator under the chart's ServiceAccount through a whole
task lifecycle, while what it must not do stays forbidden."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from devcluster.cluster import Cluster
from devcluster.kwok_pods import UNPULLABLE_REGISTRY, finish_pod, unpullable_image
from kubernetes import client

from tests.chart.chart import CHART, helm, render_text
from tests.chart.conftest import new_namespace, release
from tests.integration.conftest import (
    condition,
    create_task,
    get_task,
    running_pod,
    success_message,
    task_manifest,
    wait_status,
)
from tests.support.s3 import S3Endpoint, free_port

pytestmark = pytest.mark.cluster
BUCKET = "chart-results"


def service_account(release_name: str) -> str:
    return f"{release_name}-evaluation-operator"


def can_i(cluster: Cluster, identity: str, verb: str, resource: str,
          namespace: str | None = None, subresource: str | None = None) -> bool:
    args = ["auth", "can-i", verb, resource, f"--as={identity}"]
    args += ["-n", namespace] if namespace else []
    args += [f"--subresource={subresource}"] if subresource else []
    answer = cluster.kubectl(*args, check=False).stdout.strip()
    assert answer in ("yes", "no"), answer
    return answer == "yes"


def may_read_local_queues(cluster: Cluster, identity: str, namespace: str) -> bool:
    """`kubectl auth can-i` cannot name a resource the cluster does not serve (Kueue is not
    installed here): ask the authorizer directly."""
    review = {"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
              "spec": {"user": identity, "resourceAttributes": {
                  "group": "kueue.x-k8s.io", "resource": "localqueues", "verb": "get",
                  "namespace": namespace}}}
    answer = cluster.kubectl("create", "-o", "json", "-f", "-", input=json.dumps(review))
    return bool(json.loads(answer.stdout)["status"].get("allowed"))


# What the operator does in a namespace it watches (verb, resource, subresource).
NEEDED = [
    ("get", "evaluationtasks.evaluation.dev", None),
    ("list", "evaluationtasks.evaluation.dev", None),
    ("watch", "evaluationtasks.evaluation.dev", None),
    ("patch", "evaluationtasks.evaluation.dev", None),
    ("patch", "evaluationtasks.evaluation.dev", "status"),
    ("create", "jobs.batch", None),
    ("get", "jobs.batch", None),
    ("list", "jobs.batch", None),
    ("watch", "jobs.batch", None),
    ("delete", "jobs.batch", None),
    ("list", "pods", None),
    ("watch", "pods", None),
    ("create", "configmaps", None),
    ("get", "configmaps", None),
    ("create", "events", None),
    ("list", "events", None),
]
# What it must never do, in a watched namespace or anywhere.
FORBIDDEN = [
    ("get", "secrets"), ("list", "secrets"), ("watch", "secrets"), ("create", "secrets"),
    ("create", "pods"), ("delete", "pods"), ("create", "pods/exec"),
    ("update", "configmaps"), ("delete", "configmaps"), ("list", "configmaps"),
    ("delete", "evaluationtasks.evaluation.dev"), ("create", "evaluationtasks.evaluation.dev"),
    ("update", "jobs.batch"), ("patch", "jobs.batch"),
    ("create", "rolebindings.rbac.authorization.k8s.io"),
    ("create", "serviceaccounts/token"),
]
FORBIDDEN_CLUSTER_WIDE = [
    ("delete", "namespaces"), ("create", "namespaces"),
    ("create", "customresourcedefinitions.apiextensions.k8s.io"),
    ("update", "customresourcedefinitions.apiextensions.k8s.io"),
    ("delete", "customresourcedefinitions.apiextensions.k8s.io"),
    ("create", "clusterrolebindings.rbac.authorization.k8s.io"),
    ("list", "nodes"),
]


# --- admission ----------------------------------------------------------------------------------


@pytest.mark.parametrize("values", [
    {}, {"minio": {"enabled": True}, "metrics": {"enabled": False}},
    {"watchNamespaces": ["WATCHED"], "networkPolicy": {"enabled": False}},
], ids=["cluster-wide", "with-minio", "namespaced"])
def test_rendered_chart_is_admitted_by_the_api_server(
        cluster: Cluster, namespaces: list[str], values: dict[str, Any]) -> None:
    release_ns = new_namespace(cluster, namespaces, "eval-dry")
    if values.get("watchNamespaces"):
        values = {**values, "watchNamespaces": [new_namespace(cluster, namespaces, "watched")]}
    rendered = render_text(values, namespace=release_ns).stdout  # hooks included
    kinds = [d["kind"] for d in yaml.safe_load_all(rendered) if d]
    result = cluster.kubectl("apply", "--dry-run=server", "-f", "-", input=rendered,
                             check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("(server dry run)") == len(kinds)
    crds = cluster.kubectl("apply", "--dry-run=server", "--server-side", "--force-conflicts",
                           "-f", str(CHART / "crds"))
    assert "evaluationtasks.evaluation.dev" in crds.stdout


def test_helm_install_and_uninstall(cluster: Cluster, namespaces: list[str]) -> None:
    release_ns = new_namespace(cluster, namespaces, "eval-sys")
    watched = new_namespace(cluster, namespaces, "watched")
    # Hooks (MinIO's bucket Job) would wait for a pod KWOK never finishes: skip them here;
    # the hook Job is checked by the dry run above.
    with release(cluster, release_ns, {"watchNamespaces": [watched], "minio": {"enabled": True}},
                 "--no-hooks", "--wait", "--timeout", "120s") as name:
        status = json.loads(helm("status", name, "-n", release_ns, "-o", "json",
                                 kubeconfig=cluster.kubeconfig).stdout)
        assert status["info"]["status"] == "deployed"
        deployment = cluster.kubectl_json("get", "deployment", f"{name}-evaluation-operator",
                                          "-n", release_ns)
        assert deployment["status"].get("readyReplicas") == deployment["spec"]["replicas"] == 2
        assert cluster.kubectl("get", "role", f"{name}-evaluation-operator", "-n", watched,
                               check=False).returncode == 0
        assert cluster.kubectl("get", "secret", "evaluation-operator-s3", "-n",
                               release_ns, check=False).returncode == 0
    for kind, ns in (("deployment", release_ns), ("role", watched)):
        assert cluster.kubectl("get", kind, f"{name}-evaluation-operator", "-n", ns,
                               check=False).returncode != 0, f"{kind} left behind"
    assert cluster.kubectl("get", "clusterrole", f"{name}-evaluation-operator-crd-reader",
                           check=False).returncode != 0


# --- RBAC: what is allowed, what is not ---------------------------------------------------------


def test_namespaced_install_grants_exactly_what_the_operator_uses(
        cluster: Cluster, namespaces: list[str]) -> None:
    release_ns = new_namespace(cluster, namespaces, "eval-sys")
    watched = new_namespace(cluster, namespaces, "watched")
    other = new_namespace(cluster, namespaces, "other")
    with release(cluster, release_ns, {"watchNamespaces": [watched]}, "--no-hooks") as name:
        me = f"system:serviceaccount:{release_ns}:{service_account(name)}"
        for verb, resource, sub in NEEDED:
            assert can_i(cluster, me, verb, resource, watched, sub), (verb, resource, sub)
            assert not can_i(cluster, me, verb, resource, other, sub), (verb, resource, other)
        assert may_read_local_queues(cluster, me, watched)
        assert not may_read_local_queues(cluster, me, other)
        for verb, resource in FORBIDDEN:
            for ns in (watched, release_ns, other):
                assert not can_i(cluster, me, verb, resource, ns), (verb, resource, ns)
        for verb, resource in FORBIDDEN_CLUSTER_WIDE:
            assert not can_i(cluster, me, verb, resource), (verb, resource)
        # Leader election: its own Lease in the release namespace, nothing else.
        leases, lease = "leases.coordination.k8s.io", f"{name}-evaluation-operator"
        assert can_i(cluster, me, "create", leases, release_ns)
        for verb in ("get", "update"):
            assert can_i(cluster, me, verb, f"{leases}/{lease}", release_ns), verb
            assert not can_i(cluster, me, verb, f"{leases}/kube-scheduler", release_ns), verb
            assert not can_i(cluster, me, verb, f"{leases}/{lease}", watched), verb
        assert not can_i(cluster, me, "delete", f"{leases}/{lease}", release_ns)
        assert not can_i(cluster, me, "update", f"{leases}/kube-scheduler", "kube-system")
        # Nothing cluster-wide: not even reading CRD definitions or namespace names.
        assert not can_i(cluster, me, "list", "customresourcedefinitions.apiextensions.k8s.io")
        assert not can_i(cluster, me, "list", "namespaces")


def test_cluster_wide_install_allows_every_namespace_but_never_secrets(
        cluster: Cluster, namespaces: list[str]) -> None:
    release_ns = new_namespace(cluster, namespaces, "eval-sys")
    anywhere = new_namespace(cluster, namespaces, "anywhere")
    with release(cluster, release_ns, {}, "--no-hooks") as name:
        me = f"system:serviceaccount:{release_ns}:{service_account(name)}"
        for verb, resource, sub in NEEDED:
            assert can_i(cluster, me, verb, resource, anywhere, sub), (verb, resource, sub)
        for verb, resource in FORBIDDEN:
            assert not can_i(cluster, me, verb, resource, anywhere), (verb, resource)
            assert not can_i(cluster, me, verb, resource, release_ns), (verb, resource)
        for verb, resource in FORBIDDEN_CLUSTER_WIDE:
            assert not can_i(cluster, me, verb, resource), (verb, resource)


def test_other_custom_resources_stay_out_of_reach(cluster: Cluster,
                                                  namespaces: list[str]) -> None:
    """Reading CRD definitions is not reading (or changing) their objects."""
    group = f"{uuid.uuid4().hex[:6]}.example.com"
    crd = {"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
           "metadata": {"name": f"widgets.{group}"},
           "spec": {"group": group, "scope": "Namespaced",
                    "names": {"plural": "widgets", "singular": "widget", "kind": "Widget"},
                    "versions": [{"name": "v1", "served": True, "storage": True, "schema": {
                        "openAPIV3Schema": {"type": "object",
                                            "x-kubernetes-preserve-unknown-fields": True}}}]}}
    cluster.apply(crd)
    release_ns = new_namespace(cluster, namespaces, "eval-sys")
    try:
        with release(cluster, release_ns, {}, "--no-hooks") as name:
            me = f"system:serviceaccount:{release_ns}:{service_account(name)}"
            for verb in ("get", "list", "watch", "create", "patch", "delete"):
                assert not can_i(cluster, me, verb, f"widgets.{group}", release_ns), verb
            assert can_i(cluster, me, "get", "customresourcedefinitions.apiextensions.k8s.io")
    finally:
        cluster.kubectl("delete", "crd", f"widgets.{group}", "--wait=false", check=False)


# --- the operator under the chart's identity ----------------------------------------------------


def token_kubeconfig(cluster: Cluster, namespace: str, account: str, path: Path) -> Path:
    """A kubeconfig that authenticates as the ServiceAccount itself (TokenRequest), as the
    operator's pod would: no impersonation, no admin credentials."""
    token = cluster.kubectl("create", "token", account, "-n", namespace,
                            "--duration=1h").stdout.strip()
    admin = yaml.safe_load(Path(cluster.kubeconfig).read_text())
    context = next(c for c in admin["contexts"]
                   if c["name"] == admin["current-context"])["context"]
    cluster_entry = next(c for c in admin["clusters"] if c["name"] == context["cluster"])
    config = {
        "apiVersion": "v1", "kind": "Config", "current-context": "operator",
        "clusters": [cluster_entry],
        "users": [{"name": "operator", "user": {"token": token}}],
        "contexts": [{"name": "operator", "context": {
            "cluster": cluster_entry["name"], "user": "operator"}}],
    }
    path.write_text(yaml.safe_dump(config))
    return path


def container_env(cluster: Cluster, namespace: str, container: dict[str, Any]
                  ) -> dict[str, str]:
    """The container's environment as the kubelet would resolve it."""
    env: dict[str, str] = {}
    for entry in container.get("env") or []:
        if "valueFrom" not in entry:  # the API server drops empty values
            env[entry["name"]] = entry.get("value", "")
            continue
        if "fieldRef" in entry["valueFrom"]:  # the pod's own name or namespace
            field = entry["valueFrom"]["fieldRef"]["fieldPath"]
            env[entry["name"]] = {"metadata.name": f"{container['name']}-pod-0",
                                  "metadata.namespace": namespace}[field]
            continue
        ref = entry["valueFrom"]["secretKeyRef"]
        secret = cluster.kubectl("get", "secret", ref["name"], "-n", namespace, "-o", "json",
                                 check=not ref.get("optional"))
        data = json.loads(secret.stdout).get("data", {}) if secret.returncode == 0 else {}
        if ref["key"] in data:
            env[entry["name"]] = base64.b64decode(data[ref["key"]]).decode()
        else:
            assert ref.get("optional"), f"{ref} missing"
    return env


def _other_operators() -> list[int]:
    """Operator processes this test session started (tests/integration's), by pid."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            stat = (proc / "stat").read_text()
            cmdline = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        if parent == os.getpid() and b"evaluation_operator" in cmdline:
            found.append(int(proc.name))
    return found


@contextlib.contextmanager
def only_this_operator() -> Iterator[None]:
    """Pause any other operator of this session, so that what happens is this one's doing."""
    paused = _other_operators()
    for pid in paused:
        os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        for pid in paused:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)


@pytest.mark.kwok
@pytest.mark.parametrize("mode", ["cluster-wide", "namespaced"])
def test_operator_runs_a_whole_task_lifecycle_as_the_charts_serviceaccount(
        cluster: Cluster, namespaces: list[str], s3_server: S3Endpoint, tmp_path: Path,
        mode: str) -> None:
    s3 = s3_server.client()
    with contextlib.suppress(s3.exceptions.BucketAlreadyOwnedByYou):
        s3.create_bucket(Bucket=BUCKET)
    s3.put_bucket_versioning(Bucket=BUCKET, VersioningConfiguration={"Status": "Enabled"})
    release_ns = new_namespace(cluster, namespaces, "eval-sys")
    team = new_namespace(cluster, namespaces, "team")
    for ns, secret in ((release_ns, "operator-s3"), (team, "evaluation-s3-credentials")):
        cluster.kubectl("create", "secret", "generic", secret, "-n", ns,
                        f"--from-literal=AWS_ACCESS_KEY_ID={s3_server.access_key}",
                        f"--from-literal=AWS_SECRET_ACCESS_KEY={s3_server.secret_key}")
    health_port, metrics_port = free_port(), free_port()
    values = {
        "watchNamespaces": [team] if mode == "namespaced" else [],
        "s3": {"endpoint": s3_server.endpoint_url, "bucket": BUCKET,
               "region": s3_server.region, "credentialsSecret": "operator-s3"},
        "runner": {"image": "registry.example/evaluation-runner:chart-test",
                   "progressIntervalSeconds": 2, "startFailureGraceSeconds": 0},
        "purgeRetryMaxSeconds": 4,
        # The task with an unpullable image below passes the chart's admission policy.
        "admissionPolicy": {"allowedImages": [UNPULLABLE_REGISTRY]},
        "health": {"port": health_port},
        "metrics": {"port": metrics_port},
    }
    with release(cluster, release_ns, values, "--no-hooks") as name:
        account = service_account(name)
        deployment = cluster.kubectl_json("get", "deployment", f"{name}-evaluation-operator",
                                          "-n", release_ns)
        container = deployment["spec"]["template"]["spec"]["containers"][0]
        assert deployment["spec"]["template"]["spec"]["serviceAccountName"] == account
        env = container_env(cluster, release_ns, container)
        kubeconfig = token_kubeconfig(cluster, release_ns, account, tmp_path / "kubeconfig")
        command = [sys.executable if c == "python" else c for c in container["command"]]
        log_path = tmp_path / "operator.log"
        with only_this_operator(), open(log_path, "wb") as log:
            process = subprocess.Popen(
                [*command, *container["args"], "--verbose"],
                env={"PATH": os.environ["PATH"], **env, "KUBECONFIG": str(kubeconfig),
                     "HOME": str(tmp_path)},
                stdout=log, stderr=subprocess.STDOUT)
            try:
                _lifecycle(cluster, team, s3_server, health_port, metrics_port, log_path)
            finally:
                process.terminate()
                try:
                    process.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
    output = log_path.read_text(errors="replace")
    # RBAC refusals read 'User "system:serviceaccount:..." cannot <verb> resource ...'; other
    # 403s (e.g. a namespace being terminated) are not about the chart's rules.
    denied = [line for line in output.splitlines()
              if re.search(r"cannot \w+ resource", line) or "(RBAC)" in line
              or "Not enough permissions" in line]
    assert not denied, "the operator was refused something:\n" + "\n".join(denied[:20])


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as answer:
            return answer.status, answer.read().decode()
    except OSError as error:
        return 0, str(error)


def _lifecycle(cluster: Cluster, team: str, s3_server: S3Endpoint, health_port: int,
               metrics_port: int, log_path: Path) -> None:
    def log() -> str:
        return log_path.read_text(errors="replace")[-4000:]

    cluster.wait_until("the liveness endpoint from the chart's --liveness flag",
                       lambda: _get(f"http://127.0.0.1:{health_port}/healthz")[0] == 200,
                       timeout=120)
    core = client.CoreV1Api(cluster.api_client())

    # 1. A task runs and completes with scores.
    create_task(cluster, team, task_manifest("rbac-ok"))
    pod = running_pod(cluster, team, "rbac-ok", timeout=120)
    status = wait_status(cluster, team, "rbac-ok", "Running",
                         lambda s: condition(s, "Running").get("status") == "True", timeout=120)
    prefix = status["results"]["uri"].removeprefix(f"s3://{BUCKET}/")
    s3 = s3_server.client()
    for key in ("summary.json", "results.zip", "progress.json"):
        s3.put_object(Bucket=BUCKET, Key=prefix + key, Body=b"{}")
    s3.put_object(Bucket=BUCKET, Key=prefix + "progress.json",
                  Body=json.dumps({"samplesDone": 2, "samplesTotal": 4}).encode())
    wait_status(cluster, team, "rbac-ok", "progress read from S3",
                lambda s: (s.get("progress") or {}).get("samplesDone") == 2, timeout=120)
    benchmarks = [{"name": "arc-easy", "score": 0.5, "primaryMetric": "accuracy",
                   "metrics": {"accuracy": 0.5}, "samples": 4},
                  {"name": "wmt-de-en", "score": 0.25, "primaryMetric": "bleu",
                   "metrics": {"bleu": 25.0}, "samples": 4}]
    finish_pod(core, team, pod["metadata"]["name"], 0,
               message=success_message(0.3333, benchmarks, status["results"]["uri"]))
    status = wait_status(cluster, team, "rbac-ok", "Completed",
                         lambda s: s.get("phase") == "Completed", timeout=120)
    assert status["overallScore"] == pytest.approx(0.3333), log()
    assert condition(status, "Ready")["status"] == "True"
    assert cluster.kubectl("get", "configmap", "rbac-ok-config", "-n", team,
                           check=False).returncode == 0
    code, text = _get(f"http://127.0.0.1:{metrics_port}/metrics")
    assert code == 200
    assert (f'evaluation_score{{benchmark="",metric="overall",namespace="{team}",'
            f'task="rbac-ok"}} 0.3333') in text

    # 2. A task whose image cannot be pulled fails, and its Job is deleted (frees the GPU).
    create_task(cluster, team, task_manifest(
        "rbac-bad-image", framework={"name": "builtin", "image": unpullable_image()}))
    status = wait_status(cluster, team, "rbac-bad-image", "Failed",
                         lambda s: s.get("phase") == "Failed", timeout=120)
    assert status["reason"] == "ImagePullError", log()
    events = cluster.kubectl("get", "events", "-n", team, "--field-selector",
                             "involvedObject.name=rbac-bad-image").stdout
    assert "ImagePullError" in events, "the operator could not post events"
    cluster.wait_until("the failed task's Job deleted", lambda: cluster.kubectl(
        "get", "job", "rbac-bad-image-eval", "-n", team, check=False).returncode != 0,
        timeout=120)

    # 3. Missing references are found with the chart's rights: a PriorityClass through the
    # Job's FailedCreate events, a LocalQueue by a get (no Kueue here), a ConfigMap by a get.
    create_task(cluster, team, task_manifest(
        "rbac-no-class", scheduling={"priorityClassName": "rbac-no-such-class"}))
    create_task(cluster, team, task_manifest("rbac-queue", scheduling={"queueName": "team-q"}))
    create_task(cluster, team, task_manifest("rbac-no-cm", benchmarks=[
        {"name": "qa", "task": "generation", "metrics": ["exact-match"],
         "dataset": {"configMap": {"name": "rbac-qa", "key": "qa.jsonl"}}}]))
    for name, field in (("rbac-no-class", "spec.scheduling.priorityClassName"),
                        ("rbac-queue", "spec.scheduling.queueName"),
                        ("rbac-no-cm", "spec.benchmarks[0].dataset.configMap.name")):
        status = wait_status(cluster, team, name, "a missing reference",
                             lambda s: s.get("reason") in ("MissingReference",
                                                           "ReferenceNotFound"), timeout=120)
        assert status["message"].startswith(field), (status, log())
    for name in ("rbac-no-class", "rbac-queue", "rbac-no-cm"):
        cluster.kubectl("delete", "evaluationtask", name, "-n", team, "--timeout=120s")

    # 4. Deleting the completed task purges its results and lets the task go.
    cluster.kubectl("delete", "evaluationtask", "rbac-ok", "-n", team, "--timeout=120s")
    assert get_task(cluster, team, "rbac-ok") is None
    left = s3.list_object_versions(Bucket=BUCKET, Prefix=prefix)
    assert not left.get("Versions") and not left.get("DeleteMarkers"), log()
    code, text = _get(f"http://127.0.0.1:{metrics_port}/metrics")
    assert 'task="rbac-ok"' not in text
    cluster.kubectl("delete", "evaluationtask", "rbac-bad-image", "-n", team, "--timeout=120s")
