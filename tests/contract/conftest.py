"""What both sides of the runner contract need: an operator's view of a task (settings, the
task object as the API server returns it) and the runner run in-process."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import yaml
from evaluation_operator import naming
from evaluation_operator.config import OperatorSettings
from evaluation_operator.manifests import build_configmap, build_job
from evaluation_operator.runner_config import build_runner_config
from evaluation_operator.task import Task

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))
# What the kubelet keeps of /dev/termination-log (kubelet: MaxContainerTerminationMessageLength).
KUBELET_MESSAGE_LIMIT = 4096


def example_task(path: Path) -> dict[str, Any]:
    """The example's EvaluationTask as the API server hands it to the operator."""
    manifest = next(doc for doc in yaml.safe_load_all(path.read_text())
                    if doc["kind"] == naming.KIND)
    return task_object(manifest["metadata"]["name"], manifest["spec"])


def task_object(name: str, spec: dict[str, Any], namespace: str = "team-a") -> dict[str, Any]:
    return {"apiVersion": f"{naming.GROUP}/{naming.VERSION}", "kind": naming.KIND,
            "metadata": {"name": name, "namespace": namespace, "uid": str(uuid.uuid4()),
                         "generation": 1},
            "spec": spec}


def operator_children(task: dict[str, Any], settings: OperatorSettings
                      ) -> tuple[dict[str, Any], dict[str, Any]]:
    """The ConfigMap and Job the operator creates for `task` (reconcile's own builders)."""
    parsed = Task.from_body(task, settings)
    assert parsed.spec is not None and parsed.location is not None, parsed.spec_error
    config = build_runner_config(parsed.spec, name=parsed.name, namespace=parsed.namespace,
                                 uid=parsed.uid, location=parsed.location, settings=settings)
    return build_configmap(parsed, config), build_job(parsed, parsed.spec, settings)


def mounted_config(configmap: dict[str, Any], job: dict[str, Any], root: Path) -> Path:
    """Lay the ConfigMap out as the kubelet mounts it and return the path the Job's args
    name, re-rooted under `root`."""
    pod = job["spec"]["template"]["spec"]
    container = pod["containers"][0]
    volume = next(v for v in pod["volumes"]
                  if v.get("configMap", {}).get("name") == configmap["metadata"]["name"])
    mount = next(m for m in container["volumeMounts"] if m["name"] == volume["name"])
    directory = root / mount["mountPath"].lstrip("/")
    directory.mkdir(parents=True, exist_ok=True)
    for key, text in configmap["data"].items():
        (directory / key).write_text(text)
    args = container["args"]
    config_arg = str(args[args.index("--config") + 1])
    assert config_arg.startswith(mount["mountPath"] + "/"), "the config is not on the mount"
    return root / config_arg.lstrip("/")


def kubelet_message(log: Path) -> str:
    """The termination message as the kubelet reports it in the pod's status."""
    return log.read_bytes()[:KUBELET_MESSAGE_LIMIT].decode("utf-8", errors="replace")


def terminated_pod(exit_code: int, message: str, reason: str = "") -> dict[str, Any]:
    phase = "Succeeded" if exit_code == 0 else "Failed"
    return {"metadata": {"name": "p", "creationTimestamp": "2026-01-01T00:00:00Z"},
            "spec": {"nodeName": "node-1"},
            "status": {"phase": phase, "startTime": "2026-01-01T00:00:01Z",
                       "containerStatuses": [{"name": "runner", "state": {"terminated": {
                           "exitCode": exit_code,
                           "reason": reason or ("Completed" if exit_code == 0 else "Error"),
                           "message": message,
                           "finishedAt": "2026-01-01T00:01:00Z"}}}]}}


def finished_job(condition: str, reason: str = "") -> dict[str, Any]:
    return {"metadata": {"name": "j"}, "spec": {},
            "status": {"startTime": "2026-01-01T00:00:00Z",
                       "completionTime": "2026-01-01T00:01:00Z",
                       "conditions": [{"type": condition, "status": "True", "reason": reason,
                                       "lastTransitionTime": "2026-01-01T00:01:00Z"}]}}


def dump(value: Any) -> str:
    return json.dumps(value, sort_keys=True)
