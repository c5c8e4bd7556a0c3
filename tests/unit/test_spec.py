"""Parsing a task spec: defaults from the CRD and the operator, errors that name the field."""

from __future__ import annotations

from typing import Any

import pytest
from evaluation_operator.config import OperatorSettings
from evaluation_operator.spec import SpecError, parse_duration, parse_task_spec

SETTINGS = OperatorSettings(s3_bucket="eval-results", s3_prefix="runs",
                            s3_credentials_secret="s3-default", gpu_resource="nvidia.com/gpu")


def spec(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "model": {"name": "m", "endpoint": {"url": "http://m:8000/v1"}},
        "benchmarks": [{"name": "arc", "dataset": {"uri": "s3://datasets/arc.jsonl"},
                        "task": "multiple-choice", "metrics": ["accuracy"]}],
    }
    base.update(overrides)
    return base


def test_defaults() -> None:
    parsed = parse_task_spec(spec(), SETTINGS)
    assert parsed.framework == "builtin" and parsed.image is None
    assert parsed.timeout_seconds == 7200 and parsed.retries == 2
    assert parsed.resources.gpu == 1 and parsed.resources.gpu_resource == "nvidia.com/gpu"
    assert parsed.parameters == {"temperature": 0.0, "maxTokens": 256, "concurrency": 16,
                                 "seed": 1234}
    assert (parsed.output.bucket, parsed.output.prefix, parsed.output.credentials_secret) == (
        "eval-results", "runs", "s3-default")
    assert parsed.model.endpoint is not None and parsed.model.endpoint.api == "chat"


def test_task_values_win_over_operator_defaults() -> None:
    parsed = parse_task_spec(spec(output={"s3": {
        "bucket": "mine", "prefix": "team/x/", "credentialsSecretRef": {"name": "own"}}},
        resources={"gpu": 0, "gpuResource": "amd.com/gpu"}), SETTINGS)
    assert (parsed.output.bucket, parsed.output.prefix, parsed.output.credentials_secret) == (
        "mine", "team/x", "own")
    assert (parsed.resources.gpu, parsed.resources.gpu_resource) == (0, "amd.com/gpu")


@pytest.mark.parametrize(("text", "seconds"), [
    ("30m", 1800), ("2h", 7200), ("1h30m", 5400), ("90s", 90), ("1h0m5s", 3605)])
def test_durations(text: str, seconds: int) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "h", "2 h", "1d", "30", "-5m", "1m1h"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(SpecError, match=r"spec\.timeout"):
        parse_duration(text)


@pytest.mark.parametrize(("overrides", "field"), [
    ({"model": {"name": ""}}, "spec.model.name"),
    ({"model": {"name": "m", "endpoint": {"url": "ftp://x"}}}, "spec.model.endpoint.url"),
    ({"model": {"name": "m", "endpoint": {"url": "http://x", "api": "embeddings"}}},
     "spec.model.endpoint.api"),
    ({"model": {"name": "m", "endpoint": {"url": "http://x", "apiKeySecretRef": {"name": "k"}}}},
     "spec.model.endpoint.apiKeySecretRef"),
    ({"model": {"name": "m", "endpoint": {"url": "http://x"}, "source": {"uri": "s3://m/x"}}},
     "spec.model"),
    ({"benchmarks": [{"name": "Bad Name", "dataset": {"uri": "s3://datasets/a.jsonl"},
                      "task": "generation", "metrics": ["bleu"]}]}, "spec.benchmarks[0].name"),
    ({"benchmarks": [{"name": "a", "dataset": {"uri": "s3://datasets/a.jsonl"},
                      "task": "generation", "metrics": ["bleu"]}] * 2},
     "spec.benchmarks[1].name"),
    ({"benchmarks": [{"name": "a", "dataset": {"uri": "s3://datasets/a.jsonl"},
                      "task": "ranking", "metrics": ["bleu"]}]}, "spec.benchmarks[0].task"),
    ({"benchmarks": [{"name": "a", "dataset": {"uri": "s3://datasets/a.jsonl"},
                      "task": "generation", "metrics": ["blue"]}]}, "spec.benchmarks[0].metrics"),
    ({"benchmarks": [{"name": "a", "dataset": {"uri": "gs://datasets/a.jsonl"},
                      "task": "generation", "metrics": ["bleu"]}]},
     "spec.benchmarks[0].dataset.uri"),
    ({"benchmarks": [{"name": "a", "dataset": {"pvc": {"claimName": "c", "path": "../x"}},
                      "task": "generation", "metrics": ["bleu"]}]},
     "spec.benchmarks[0].dataset.pvc"),
    ({"benchmarks": [{"name": "a", "dataset": {}, "task": "generation", "metrics": ["bleu"]}]},
     "spec.benchmarks[0].dataset"),
    ({"model": {"name": "m", "endpoint": {"url": "http://u:sk-123@m/v1"}}},
     "spec.model.endpoint.url"),
    ({"benchmarks": [{"name": "a", "dataset": {"uri": "https://u:p@x.org/a.jsonl"},
                      "task": "generation", "metrics": ["bleu"]}]},
     "spec.benchmarks[0].dataset.uri"),
    ({"model": {"name": "m", "source": {"uri": "s3://m/x", "pvc": {"claimName": "w"}}}},
     "spec.model.source"),
    ({"model": {"name": "m", "source": {"uri": "relative/path"}}}, "spec.model.source.uri"),
    ({"model": {"name": "m", "source": {"pvc": {"claimName": "w", "path": "a/../../b"}}}},
     "spec.model.source.pvc"),
    ({"resources": {"gpu": -1}}, "spec.resources.gpu"),
    ({"retries": -1}, "spec.retries"),
    ({"timeout": "forever"}, "spec.timeout"),
])
def test_errors_name_the_field(overrides: dict[str, Any], field: str) -> None:
    with pytest.raises(SpecError) as error:
        parse_task_spec(spec(**overrides), SETTINGS)
    assert error.value.field == field
    assert str(error.value).startswith(field)
    assert "sk-123" not in str(error.value) and "u:p@" not in str(error.value)


def test_dataset_sources() -> None:
    parsed = parse_task_spec(spec(benchmarks=[
        {"name": "cm", "dataset": {"configMap": {"name": "d", "key": "d.jsonl"}},
         "task": "generation", "metrics": ["bleu"]},
        {"name": "pvc", "dataset": {"pvc": {"claimName": "c", "path": "/x/y.csv"}},
         "task": "classification", "metrics": ["f1"], "labels": ["a", "b"], "weight": 0.5},
    ]), SETTINGS)
    configmap, pvc = parsed.benchmarks
    assert configmap.dataset.configmap is not None and configmap.dataset.configmap.key == "d.jsonl"
    assert (pvc.dataset.pvc_claim, pvc.dataset.pvc_path) == ("c", "x/y.csv")
    assert pvc.labels == ("a", "b") and pvc.weight == 0.5
