"""The operator's config.json, for every example, read by the runner's own loader from where
the Job mounts it; the runner sees the task the user wrote."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from evaluation_operator.config import OperatorSettings
from evaluation_operator.spec import FAILURE_POLICIES, parse_task_spec
from evaluation_runner.config import RunnerConfig, load_config

from tests.contract.conftest import EXAMPLES, example_task, mounted_config, operator_children

SETTINGS = OperatorSettings(s3_bucket="eval-results", s3_endpoint="http://127.0.0.1:9000",
                            runner_s3_endpoint="http://minio.minio.svc:9000",
                            s3_region="us-east-1", progress_interval_seconds=10)


def runner_view(example: Path, tmp_path: Path
                ) -> tuple[dict[str, Any], dict[str, Any], RunnerConfig]:
    task = example_task(example)
    configmap, job = operator_children(task, SETTINGS)
    return task, job, load_config(mounted_config(configmap, job, tmp_path))


@pytest.mark.parametrize("example", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_every_example_reaches_the_runner_as_written(example: Path, tmp_path: Path) -> None:
    task, _, config = runner_view(example, tmp_path)
    spec = parse_task_spec(task["spec"], SETTINGS)
    meta = task["metadata"]
    assert config.task == {"name": meta["name"], "namespace": meta["namespace"],
                           "uid": meta["uid"]}
    assert config.model_name == spec.model.name
    assert config.framework == spec.framework
    if spec.model.endpoint:
        assert config.endpoint is not None
        assert (config.endpoint.url, config.endpoint.api) == (
            spec.model.endpoint.url.rstrip("/"), spec.model.endpoint.api)
        assert config.endpoint.timeout_seconds == spec.model.endpoint.timeout_seconds
    else:
        assert config.endpoint is None and config.source_uri
    assert [(b.name, b.task, b.metrics, b.limit, b.weight, b.few_shot, b.labels)
            for b in config.benchmarks] == [
        (b.name, b.task, b.metrics, b.limit, b.weight, b.few_shot, b.labels)
        for b in spec.benchmarks]
    for ours, theirs in zip(config.benchmarks, spec.benchmarks, strict=True):
        assert ours.dataset.format == theirs.dataset.format
        for column, name in theirs.dataset.fields.items():
            assert ours.dataset.column(column) == name
        if theirs.dataset.uri:
            assert ours.dataset.uri == theirs.dataset.uri
    parameters = spec.parameters
    assert config.temperature == float(parameters.get("temperature", config.temperature))
    assert config.max_tokens == int(parameters.get("maxTokens", config.max_tokens))
    assert config.concurrency == int(parameters.get("concurrency", config.concurrency))
    assert config.seed == int(parameters.get("seed", config.seed))
    # The runner writes exactly below the task's own prefix, through the pods' S3 endpoint.
    assert config.output.bucket == spec.output.bucket
    assert config.output.prefix.endswith(f"/{meta['namespace']}/{meta['name']}/{meta['uid']}/")
    assert config.output.endpoint_url == SETTINGS.pod_s3_endpoint
    assert config.output.region == SETTINGS.s3_region
    assert config.failure_policy == spec.failure_policy


@pytest.mark.parametrize("policy", FAILURE_POLICIES)
def test_the_failure_policy_reaches_the_runner(policy: str, tmp_path: Path) -> None:
    task = example_task(EXAMPLES[0])
    task["spec"]["failurePolicy"] = policy
    configmap, job = operator_children(task, SETTINGS)
    assert load_config(mounted_config(configmap, job, tmp_path)).failure_policy == policy


@pytest.mark.parametrize("example", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_every_local_path_the_runner_reads_is_mounted(example: Path, tmp_path: Path) -> None:
    """ConfigMap and PVC datasets and PVC model weights are named by path in the config: each
    path must lie on a read-only volume of the runner container."""
    _, job, config = runner_view(example, tmp_path)
    container = job["spec"]["template"]["spec"]["containers"][0]
    mounts = [m["mountPath"].rstrip("/") + "/" for m in container["volumeMounts"]]
    local = [b.dataset.uri for b in config.benchmarks if b.dataset.uri.startswith("/")]
    if config.source_uri and config.source_uri.startswith("/"):
        local.append(config.source_uri)
    for path in local:
        assert any((path.rstrip("/") + "/").startswith(m) for m in mounts), (path, mounts)


@pytest.mark.parametrize("example", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_the_api_key_variable_the_runner_reads_is_set_on_the_container(
        example: Path, tmp_path: Path) -> None:
    _, job, config = runner_view(example, tmp_path)
    env = {e["name"] for e in job["spec"]["template"]["spec"]["containers"][0]["env"]}
    if config.endpoint and config.endpoint.api_key_env:
        assert config.endpoint.api_key_env in env
    # The runner's S3 client reads the standard AWS variables.
    assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} <= env
