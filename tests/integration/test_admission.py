"""Specs the API server rejects at admission, each with the field named (one per rule)."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from typing import Any

import pytest
from devcluster.cluster import Cluster

from tests.integration.conftest import task_manifest

pytestmark = pytest.mark.cluster


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def mutate(spec: dict[str, Any]) -> None:
        keys = path.split(".")
        target = spec
        for key in keys[:-1]:
            target = target[int(key)] if isinstance(target, list) else target.setdefault(key, {})
        if isinstance(target, list):
            target[int(keys[-1])] = value
        else:
            target[keys[-1]] = value
    return mutate


def _delete(path: str) -> Callable[[dict[str, Any]], None]:
    def mutate(spec: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        target: Any = spec
        for key in parents:
            target = target[int(key)] if isinstance(target, list) else target[key]
        del target[last]
    return mutate


REJECTIONS: list[tuple[str, Callable[[dict[str, Any]], None], str, str]] = [
    ("no-benchmarks", _set("benchmarks", []), "spec.benchmarks", "at least 1"),
    ("duplicate-benchmark-names", _set("benchmarks.1.name", "arc-easy"), "spec.benchmarks",
     "benchmark names must be unique"),
    ("endpoint-not-http", _set("model.endpoint.url", "ftp://models/x"),
     "spec.model.endpoint.url", "must be an http:// or https:// URL"),
    ("endpoint-and-source", _set("model.source", {"uri": "s3://models/x/"}), "spec.model",
     "set exactly one of model.endpoint"),
    ("neither-endpoint-nor-source", _delete("model.endpoint"), "spec.model",
     "set exactly one of model.endpoint"),
    ("bad-source-uri", lambda s: (_delete("model.endpoint")(s),
                                  _set("model.source", {"uri": "s3://x"})(s)),
     "spec.model.source.uri", "must be s3://bucket/path"),
    ("bad-dataset-uri", _set("benchmarks.0.dataset", {"uri": "gs://bucket/data.jsonl"}),
     "spec.benchmarks[0].dataset.uri", "must be s3://bucket/key or an http(s):// URL"),
    ("two-dataset-sources", _set("benchmarks.0.dataset", {
        "uri": "s3://datasets/a.jsonl", "configMap": {"name": "c", "key": "k"}}),
     "spec.benchmarks[0].dataset", "set exactly one of dataset.uri"),
    ("pvc-path-traversal", _set("benchmarks.0.dataset", {
        "pvc": {"claimName": "data", "path": "../../etc/passwd"}}),
     "spec.benchmarks[0].dataset.pvc.path", "must not contain '..'"),
    ("negative-gpus", _set("resources.gpu", -1), "spec.resources.gpu",
     "greater than or equal to 0"),
    ("bad-timeout-format", _set("timeout", "two hours"), "spec.timeout", "should match"),
    ("timeout-too-short", _set("timeout", "30s"), "spec.timeout",
     "must be a duration between 1m and 168h"),
    ("unknown-metric", _set("benchmarks.0.metrics", ["accuracy", "blue"]),
     "spec.benchmarks[0].metrics[1]", "Unsupported value: \"blue\""),
    ("bleu-on-multiple-choice", _set("benchmarks.0.metrics", ["bleu"]), "spec.benchmarks[0]",
     "multiple-choice benchmarks support the metrics accuracy, f1 and exact-match"),
    ("labels-outside-classification", _set("benchmarks.0.labels", ["a", "b"]),
     "spec.benchmarks[0]", "labels apply to classification benchmarks only"),
    ("unknown-task-type", _set("benchmarks.0.task", "ranking"), "spec.benchmarks[0].task",
     "Unsupported value: \"ranking\""),
    ("bad-benchmark-name", _set("benchmarks.0.name", "ARC Easy"), "spec.benchmarks[0].name",
     "should match"),
    ("negative-retries", _set("retries", -1), "spec.retries", "greater than or equal to 0"),
    ("bad-bucket", _set("output", {"s3": {"bucket": "Not_A_Bucket"}}),
     "spec.output.s3.bucket", "should match"),
    ("prefix-traversal", _set("output", {"s3": {"prefix": "../other-team"}}),
     "spec.output.s3.prefix", "must be a relative key prefix without '..'"),
    ("literal-api-key", _set("model.endpoint.apiKey", "sk-secret"), "spec.model.endpoint",
     "unknown field \"spec.model.endpoint.apiKey\""),
    ("literal-s3-key", _set("output", {"s3": {"secretAccessKey": "x"}}), "spec.output.s3",
     "unknown field \"spec.output.s3.secretAccessKey\""),
    ("credentials-in-endpoint-url", _set("model.endpoint.url", "http://u:sk-1@m.svc:8000/v1"),
     "spec.model.endpoint.url", "must not hold credentials"),
    ("credentials-in-dataset-url", _set("benchmarks.0.dataset",
                                        {"uri": "https://u:p@example.org/d.jsonl"}),
     "spec.benchmarks[0].dataset.uri", "must not hold credentials"),
    ("source-uri-and-pvc", lambda s: (_delete("model.endpoint")(s), _set("model.source", {
        "uri": "s3://models/x/", "pvc": {"claimName": "weights"}})(s)), "spec.model.source",
     "set exactly one of model.source.uri and model.source.pvc"),
    ("source-pvc-traversal", lambda s: (_delete("model.endpoint")(s), _set("model.source", {
        "pvc": {"claimName": "weights", "path": "../other"}})(s)),
     "spec.model.source.pvc.path", "must not contain '..'"),
    ("all-weights-zero", lambda s: [b.update(weight=0) for b in s["benchmarks"]],
     "spec.benchmarks", "at least one benchmark needs a weight above 0"),
    ("toleration-exists-with-value", _set("scheduling", {"tolerations": [
        {"key": "nvidia.com/gpu", "operator": "Exists", "value": "x"}]}),
     "spec.scheduling.tolerations[0]", "a toleration with operator Exists must not set a value"),
    ("toleration-seconds-without-noexecute", _set("scheduling", {"tolerations": [
        {"key": "gpu", "operator": "Exists", "effect": "NoSchedule", "tolerationSeconds": 5}]}),
     "spec.scheduling.tolerations[0]", "tolerationSeconds applies to the NoExecute effect only"),
    ("bad-queue-name", _set("scheduling", {"queueName": "team a"}),
     "spec.scheduling.queueName", "should match"),
    ("no-dataset-source", _set("benchmarks.0.dataset", {"format": "jsonl"}),
     "spec.benchmarks[0].dataset", "set exactly one of dataset.uri"),
    ("no-metrics", _set("benchmarks.0.metrics", []), "spec.benchmarks[0].metrics",
     "at least 1"),
]


@pytest.mark.parametrize(("case", "mutate", "field", "message"), REJECTIONS,
                         ids=[r[0] for r in REJECTIONS])
def test_invalid_spec_is_rejected_naming_the_field(
    cluster: Cluster, case: str, mutate: Callable[[dict[str, Any]], None], field: str,
    message: str,
) -> None:
    manifest = task_manifest(f"reject-{case}")
    mutate(manifest["spec"])
    result = cluster.kubectl("create", "--dry-run=server", "--validate=strict", "-n", "default",
                             "-f", "-", input=json.dumps(manifest), check=False)
    assert result.returncode != 0, f"{case} was accepted"
    assert field in result.stderr, result.stderr
    assert message in result.stderr, result.stderr


def test_valid_spec_is_accepted_with_defaults(cluster: Cluster) -> None:
    result = cluster.kubectl("create", "--dry-run=server", "-n", "default", "-o", "json", "-f",
                             "-", input=json.dumps(task_manifest("defaults")))
    spec = json.loads(result.stdout)["spec"]
    assert spec["timeout"] == "2h"
    assert spec["retries"] == 2
    assert spec["framework"] == {"name": "builtin"}
    assert spec["model"]["endpoint"]["api"] == "chat"
    assert spec["parameters"] == {"temperature": 0, "maxTokens": 256, "concurrency": 16,
                                  "seed": 1234}


def test_spec_cannot_be_edited_once_created(cluster: Cluster) -> None:
    name = "immutable"
    cluster.kubectl("create", "-n", "default", "-f", "-",
                    input=json.dumps(task_manifest(name)))
    try:
        edited = copy.deepcopy(task_manifest(name))
        edited["spec"]["benchmarks"][0]["limit"] = 10
        result = cluster.kubectl("apply", "-n", "default", "-f", "-",
                                 input=json.dumps(edited), check=False)
        assert result.returncode != 0
        assert "spec is immutable once the task is created" in result.stderr
        labels = cluster.kubectl("label", "evaluationtask", name, "-n", "default", "team=a",
                                 check=False)
        assert labels.returncode == 0, "metadata stays editable"
    finally:
        cluster.kubectl("delete", "evaluationtask", name, "-n", "default", "--wait=false",
                        check=False)


@pytest.mark.parametrize(("field", "text"), [
    ("evaluationtask.spec.model.endpoint.apiKeySecretRef", "Never put a key in the spec"),
    ("evt.spec.benchmarks.dataset.pvc.path", "Path of the file inside the volume"),
    ("evaluationtask.spec.timeout", "1h30m"),
    ("evaluationtask.status.conditions", "Ready, Reconciling, Stalled"),
])
def test_kubectl_explain_describes_fields(cluster: Cluster, field: str, text: str) -> None:
    # The CRD's OpenAPI reaches the published document a few seconds after installation.
    result = cluster.wait_until(f"kubectl explain {field}", lambda: (
        r := cluster.kubectl("explain", field, check=False)).returncode == 0 and r, timeout=30)
    assert text in " ".join(result.stdout.split()), result.stdout
