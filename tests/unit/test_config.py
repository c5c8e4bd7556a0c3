"""Operator configuration and the Prometheus metrics users scrape."""

from __future__ import annotations

import pytest
from evaluation_operator import metrics
from evaluation_operator.__main__ import build_argv
from evaluation_operator.settings import OperatorSettings, SettingsError
from prometheus_client import generate_latest


def test_settings_from_env() -> None:
    settings = OperatorSettings.from_env({
        "EVAL_NAMESPACES": "team-a, team-b", "EVAL_S3_BUCKET": "b", "EVAL_S3_PREFIX": "/runs/",
        "EVAL_GPU_RESOURCE": "amd.com/gpu", "EVAL_PROGRESS_INTERVAL_SECONDS": "5"})
    assert settings.namespaces == ("team-a", "team-b")
    assert settings.s3_prefix == "runs"
    assert settings.gpu_resource == "amd.com/gpu"
    assert settings.progress_interval_seconds == 5
    assert build_argv(settings, [])[-4:] == ["--namespace", "team-a", "--namespace", "team-b"]
    assert "--all-namespaces" in build_argv(OperatorSettings(), [])


@pytest.mark.parametrize("env", [
    {"EVAL_PROGRESS_INTERVAL_SECONDS": "often"},
    {"EVAL_PROGRESS_INTERVAL_SECONDS": "0"},
    {"EVAL_RUNNER_IMAGE_PULL_POLICY": "Sometimes"},
])
def test_bad_settings_name_the_variable(env: dict[str, str]) -> None:
    with pytest.raises(SettingsError, match=next(iter(env))):
        OperatorSettings.from_env(env)


def test_scores_phases_and_failures_are_exported() -> None:
    status = {"phase": "Completed", "overallScore": 0.71, "startTime": "2026-01-01T00:00:10Z",
              "completionTime": "2026-01-01T00:10:10Z",
              "benchmarks": [{"name": "arc", "score": 0.8, "metrics": {"accuracy": 0.8}}]}
    metrics.observe_transition("ns-m", "t1", {}, status, created="2026-01-01T00:00:00Z")
    metrics.record_scores("ns-m", "t1", status)
    metrics.record_failure("ns-m", "OOMKilled")
    text = generate_latest(metrics.REGISTRY).decode()
    assert 'evaluation_score{benchmark="arc",metric="accuracy",namespace="ns-m",task="t1"} 0.8' \
        in text
    assert 'evaluation_score{benchmark="",metric="overall",namespace="ns-m",task="t1"} 0.71' in text
    assert 'evaluation_tasks{namespace="ns-m",phase="Completed"} 1.0' in text
    assert 'evaluation_task_failures_total{namespace="ns-m",reason="OOMKilled"} 1.0' in text
    metrics.forget_task("ns-m", "t1")
    text = generate_latest(metrics.REGISTRY).decode()
    assert 'task="t1"' not in text
    assert 'evaluation_tasks{namespace="ns-m",phase="Completed"} 0.0' in text
