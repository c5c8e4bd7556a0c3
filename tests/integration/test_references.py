"""Objects a task names but the cluster lacks (issue 10): a Secret or one of its keys, a
ConfigMap, a PVC, a PriorityClass, a LocalQueue. The status and an Event name the task's own
field. Real API server, admission, Job controller and scheduler; only the kubelet's report
of a missing Secret is played by the test (KWOK has no kubelet)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from devcluster.cluster import Cluster
from devcluster.tools import pinned_versions, tools_dir

from tests.integration.conftest import (
    START_FAILURE_GRACE_SECONDS,
    OperatorProcess,
    condition,
    create_task,
    running_pod,
    task_manifest,
    wait_status,
)

pytestmark = [pytest.mark.cluster]
GRACE_TIMEOUT = START_FAILURE_GRACE_SECONDS + 30


def _events(cluster: Cluster, namespace: str, task: str) -> list[dict[str, Any]]:
    listed = cluster.kubectl_json("get", "events", "-n", namespace, "--field-selector",
                                  f"involvedObject.name={task},involvedObject.kind="
                                  "EvaluationTask")
    return list(listed["items"])


def _warned(cluster: Cluster, namespace: str, task: str, reason: str, text: str) -> None:
    def found() -> bool:
        return any(e["reason"] == reason and e["type"] == "Warning" and text in e["message"]
                   for e in _events(cluster, namespace, task))

    cluster.wait_until(f"a {reason} event on {task}", found, timeout=30)


def _scheduled_pod(cluster: Cluster, namespace: str, task: str) -> dict[str, Any]:
    def find() -> dict[str, Any] | None:
        pods = cluster.kubectl_json("get", "pods", "-n", namespace, "-l",
                                    f"evaluation.dev/task={task}")["items"]
        return next((p for p in pods if p["spec"].get("nodeName")), None)

    result: dict[str, Any] = cluster.wait_until(f"a scheduled pod of {task}", find)
    return result


def _kubelet_reports(core: Any, namespace: str, pod: dict[str, Any], message: str) -> None:
    """What a kubelet writes when it cannot build the runner's environment."""
    core.patch_namespaced_pod_status(pod["metadata"]["name"], namespace, {"status": {
        "phase": "Pending",
        "containerStatuses": [{
            "name": "runner", "image": pod["spec"]["containers"][0]["image"], "ready": False,
            "restartCount": 0, "imageID": "",
            "state": {"waiting": {"reason": "CreateContainerConfigError", "message": message}},
        }],
    }})


def _job_exists(cluster: Cluster, namespace: str, task: str) -> bool:
    result = cluster.kubectl("get", "job", f"{task}-eval", "-n", namespace, check=False)
    return result.returncode == 0


def test_a_missing_secret_or_key_names_the_tasks_field(
    cluster: Cluster, namespace: str, running_operator: OperatorProcess, core: Any,
) -> None:
    endpoint = {"url": "http://tiny-llm.models.svc:8000/v1",
                "apiKeySecretRef": {"name": "kubelet-reports-llm-key", "key": "token"}}
    create_task(cluster, namespace, task_manifest(
        "no-secret", model={"name": "tiny-llm", "endpoint": endpoint}))
    # The S3 credentials Secret exists but lacks a key the runner needs.
    cluster.kubectl("create", "secret", "generic", "kubelet-reports-s3", "-n", namespace,
                    "--from-literal=AWS_ACCESS_KEY_ID=x")
    create_task(cluster, namespace, task_manifest(
        "no-key", output={"s3": {"credentialsSecretRef": {"name": "kubelet-reports-s3"}}}))

    _kubelet_reports(core, namespace, _scheduled_pod(cluster, namespace, "no-secret"),
                     'secret "kubelet-reports-llm-key" not found')
    _kubelet_reports(core, namespace, _scheduled_pod(cluster, namespace, "no-key"),
                     "couldn't find key AWS_SECRET_ACCESS_KEY in Secret "
                     f"{namespace}/kubelet-reports-s3")

    expected = {
        "no-secret": ('spec.model.endpoint.apiKeySecretRef.name: Secret '
                      f'"kubelet-reports-llm-key" not found in namespace "{namespace}". '
                      'Create Secret "kubelet-reports-llm-key"'),
        "no-key": ('spec.output.s3.credentialsSecretRef.name: Secret "kubelet-reports-s3" '
                   f'in namespace "{namespace}" has no key "AWS_SECRET_ACCESS_KEY". Add key'),
    }
    for name, text in expected.items():
        waiting = wait_status(cluster, namespace, name, "MissingReference",
                              lambda s: s.get("reason") in ("MissingReference",
                                                            "ReferenceNotFound"))
        assert text in waiting["message"], waiting
        assert "Job" not in waiting["message"] and "env" not in waiting["message"]
        _warned(cluster, namespace, name, "MissingReference", text)
        failed = wait_status(cluster, namespace, name, "Failed",
                             lambda s: s.get("phase") == "Failed", timeout=GRACE_TIMEOUT)
        assert failed["reason"] == "ReferenceNotFound" and text in failed["message"]
        assert condition(failed, "Stalled")["reason"] == "ReferenceNotFound"
        _warned(cluster, namespace, name, "ReferenceNotFound", text)
        # The pod can never start: its Job goes, so nothing holds a GPU.
        cluster.wait_until(f"the Job of {name} deleted",
                           lambda n=name: not _job_exists(cluster, namespace, n))


def test_a_missing_configmap_or_key_waits_without_a_job_then_fails(
    cluster: Cluster, namespace: str, running_operator: OperatorProcess,
) -> None:
    cluster.kubectl("create", "configmap", "qa-other", "-n", namespace,
                    "--from-literal=other.jsonl={}")
    for name, configmap in (("no-configmap", "qa"), ("no-cm-key", "qa-other")):
        benchmarks = [{"name": "qa", "task": "generation", "metrics": ["exact-match"],
                       "dataset": {"configMap": {"name": configmap, "key": "qa.jsonl"}}}]
        create_task(cluster, namespace, task_manifest(name, benchmarks=benchmarks))
    expected = {
        "no-configmap": ('spec.benchmarks[0].dataset.configMap.name: ConfigMap "qa" not '
                         f'found in namespace "{namespace}"'),
        "no-cm-key": ('spec.benchmarks[0].dataset.configMap.key: ConfigMap "qa-other" in '
                      f'namespace "{namespace}" has no key "qa.jsonl"'),
    }
    for name, text in expected.items():
        waiting = wait_status(cluster, namespace, name, "MissingReference",
                              lambda s: s.get("reason") in ("MissingReference",
                                                            "ReferenceNotFound"))
        assert text in waiting["message"], waiting
        assert not _job_exists(cluster, namespace, name)
        failed = wait_status(cluster, namespace, name, "Failed",
                             lambda s: s.get("phase") == "Failed", timeout=GRACE_TIMEOUT)
        assert failed["reason"] == "ReferenceNotFound" and text in failed["message"]
        _warned(cluster, namespace, name, "ReferenceNotFound", text)
        assert not _job_exists(cluster, namespace, name)


def test_a_missing_pvc_waits_for_the_claim_and_then_runs(
    cluster: Cluster, namespace: str, running_operator: OperatorProcess,
) -> None:
    benchmarks = [{"name": "big", "task": "generation", "metrics": ["exact-match"],
                   "dataset": {"pvc": {"claimName": "corpus", "path": "big.jsonl"}}}]
    create_task(cluster, namespace, task_manifest("no-pvc", benchmarks=benchmarks))
    text = ('spec.benchmarks[0].dataset.pvc.claimName: PersistentVolumeClaim "corpus" not '
            f'found in namespace "{namespace}"')
    waiting = wait_status(cluster, namespace, "no-pvc", "MissingReference",
                          lambda s: s.get("reason") == "MissingReference")
    assert waiting["phase"] == "Evaluating" and text in waiting["message"], waiting
    assert "the run starts once it exists" in waiting["message"]
    assert condition(waiting, "Scheduled")["status"] == "False"
    _warned(cluster, namespace, "no-pvc", "MissingReference", text)

    # The user creates the claim (bound to a volume): the scheduler places the pod.
    volume = f"corpus-{namespace}"
    cluster.apply([
        {"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": volume},
         "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadOnlyMany"],
                  "storageClassName": "", "hostPath": {"path": "/tmp/corpus"},
                  "claimRef": {"namespace": namespace, "name": "corpus"}}},
        {"apiVersion": "v1", "kind": "PersistentVolumeClaim",
         "metadata": {"name": "corpus", "namespace": namespace},
         "spec": {"accessModes": ["ReadOnlyMany"], "storageClassName": "",
                  "volumeName": volume, "resources": {"requests": {"storage": "1Gi"}}}},
    ])
    try:
        running_pod(cluster, namespace, "no-pvc", timeout=90)
        wait_status(cluster, namespace, "no-pvc", "Running",
                    lambda s: s.get("reason") == "Running", timeout=30)
    finally:
        cluster.kubectl("delete", "pv", volume, "--wait=false", check=False)


def test_a_missing_priority_class_fails_naming_the_field(
    cluster: Cluster, namespace: str, running_operator: OperatorProcess,
) -> None:
    create_task(cluster, namespace, task_manifest(
        "no-priority", scheduling={"priorityClassName": "no-such-priority"}))
    text = 'spec.scheduling.priorityClassName: PriorityClass "no-such-priority" not found'
    waiting = wait_status(cluster, namespace, "no-priority", "MissingReference",
                          lambda s: s.get("reason") in ("MissingReference",
                                                        "ReferenceNotFound"))
    assert text in waiting["message"], waiting
    assert "ask a cluster admin" in waiting["message"].lower()
    failed = wait_status(cluster, namespace, "no-priority", "Failed",
                         lambda s: s.get("phase") == "Failed", timeout=GRACE_TIMEOUT)
    assert failed["reason"] == "ReferenceNotFound" and text in failed["message"]
    _warned(cluster, namespace, "no-priority", "ReferenceNotFound", text)
    cluster.wait_until("the Job deleted",
                       lambda: not _job_exists(cluster, namespace, "no-priority"))


def test_a_queue_name_without_kueue_says_so(
    cluster: Cluster, namespace: str, running_operator: OperatorProcess,
) -> None:
    served = cluster.kubectl("api-resources", "--api-group=kueue.x-k8s.io", "-o", "name")
    if "localqueues" in served.stdout:
        pytest.skip("Kueue is installed here")
    create_task(cluster, namespace, task_manifest("no-kueue",
                                                  scheduling={"queueName": "gpu-q"}))
    waiting = wait_status(cluster, namespace, "no-kueue", "MissingReference",
                          lambda s: s.get("reason") == "MissingReference")
    assert waiting["message"].startswith('spec.scheduling.queueName: LocalQueue "gpu-q" '
                                         "cannot be looked up"), waiting
    assert "is Kueue installed?" in waiting["message"]
    assert "Until then the Job stays suspended" in waiting["message"]
    _warned(cluster, namespace, "no-kueue", "MissingReference", "is Kueue installed?")
    job = cluster.kubectl_json("get", "job", "no-kueue-eval", "-n", namespace)
    assert job["spec"]["suspend"] is True
    assert json.dumps(waiting).count("no-kueue-eval") == 1  # jobName only, not the message


def _kueue_crd() -> Path:
    """Kueue's own LocalQueue CRD, fetched by `make tools` from Kueue's Go module."""
    version = pinned_versions()["KUEUE_VERSION"]
    path = tools_dir() / f"kueue-{version}" / "kueue.x-k8s.io_localqueues.yaml"
    assert path.is_file(), f"{path} is missing: run `make tools`"
    return path


def test_a_missing_local_queue_waits_until_it_exists_and_kueue_admits(
    cluster: Cluster, namespace: str, running_operator: OperatorProcess,
) -> None:
    crd = "localqueues.kueue.x-k8s.io"
    served = cluster.kubectl("api-resources", "--api-group=kueue.x-k8s.io", "-o", "name")
    installed_here = "localqueues" not in served.stdout
    if installed_here:
        cluster.kubectl("apply", "--server-side", "-f", str(_kueue_crd()))
        cluster.kubectl("wait", "--for=condition=Established", f"crd/{crd}", "--timeout=60s")
    try:
        create_task(cluster, namespace, task_manifest("no-queue",
                                                      scheduling={"queueName": "eval-q"}))
        text = (f'spec.scheduling.queueName: LocalQueue "eval-q" not found in namespace '
                f'"{namespace}". Create LocalQueue "eval-q", or fix spec.scheduling.queueName: '
                "Kueue admits the Job once it exists")
        waiting = wait_status(cluster, namespace, "no-queue", "MissingReference",
                              lambda s: s.get("reason") == "MissingReference")
        assert waiting["phase"] == "Evaluating" and text in waiting["message"], waiting
        assert condition(waiting, "Scheduled")["reason"] == "MissingReference"
        _warned(cluster, namespace, "no-queue", "MissingReference", text)
        # The team creates its queue; Kueue then admits the Job by unsuspending it.
        cluster.apply({"apiVersion": "kueue.x-k8s.io/v1beta2", "kind": "LocalQueue",
                       "metadata": {"name": "eval-q", "namespace": namespace},
                       "spec": {"clusterQueue": "gpus"}})
        cluster.kubectl("patch", "job", "no-queue-eval", "-n", namespace, "--type=merge",
                        "-p", '{"spec": {"suspend": false}}')
        running_pod(cluster, namespace, "no-queue")
        wait_status(cluster, namespace, "no-queue", "Running",
                    lambda s: s.get("reason") == "Running")
    finally:
        if installed_here:  # the other tests run without Kueue, as most clusters do
            cluster.kubectl("delete", "crd", crd, "--timeout=60s", check=False)
