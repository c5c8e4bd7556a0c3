"""The resolved runner configuration (docs/runner-contract.md, section 1)."""

from __future__ import annotations

from typing import Any

from evaluation_operator.config import OperatorSettings
from evaluation_operator.s3 import ResultsLocation
from evaluation_operator.spec import Benchmark, TaskSpec

CONFIG_VERSION = 1
CONFIG_DIR = "/etc/evaluation"
CONFIG_KEY = "config.json"
DATASETS_DIR = "/datasets"
MODELS_DIR = "/models"
MODEL_API_KEY_ENV = "EVAL_MODEL_API_KEY"


def dataset_mount_dir(benchmark: Benchmark) -> str:
    return f"{DATASETS_DIR}/{benchmark.name}"


def dataset_uri_for_runner(benchmark: Benchmark) -> str:
    dataset = benchmark.dataset
    if dataset.uri:
        return dataset.uri
    if dataset.configmap:
        return f"{dataset_mount_dir(benchmark)}/{dataset.configmap.key}"
    return f"{dataset_mount_dir(benchmark)}/{dataset.pvc_path}"


def model_source_for_runner(spec: TaskSpec) -> dict[str, str] | None:
    if spec.model.source_uri:
        return {"uri": spec.model.source_uri}
    if spec.model.source_pvc_claim:
        path = spec.model.source_pvc_path
        return {"uri": f"{MODELS_DIR}/{path}" if path else MODELS_DIR}
    return None


def build_runner_config(
    spec: TaskSpec, *, name: str, namespace: str, uid: str, location: ResultsLocation,
    settings: OperatorSettings,
) -> dict[str, Any]:
    endpoint = None
    if spec.model.endpoint:
        endpoint = {
            "url": spec.model.endpoint.url,
            "api": spec.model.endpoint.api,
            "apiKeyEnv": MODEL_API_KEY_ENV if spec.model.endpoint.api_key else None,
            "timeoutSeconds": spec.model.endpoint.timeout_seconds,
            "maxRetries": 5,
        }
    return {
        "version": CONFIG_VERSION,
        "task": {"name": name, "namespace": namespace, "uid": uid},
        "model": {
            "name": spec.model.name,
            "endpoint": endpoint,
            "source": model_source_for_runner(spec),
        },
        "framework": {"name": spec.framework},
        "benchmarks": [
            {
                "name": b.name,
                "dataset": {
                    "uri": dataset_uri_for_runner(b),
                    "format": b.dataset.format,
                    "fields": {"prompt": "prompt", "choices": "choices",
                               "reference": "reference", **b.dataset.fields},
                },
                "task": b.task,
                "metrics": list(b.metrics),
                "limit": b.limit,
                "weight": b.weight,
                "fewShot": b.few_shot,
                "labels": list(b.labels) if b.labels else None,
                "language": b.language,
                "metricOptions": dict(b.metric_options),
            }
            for b in spec.benchmarks
        ],
        "parameters": dict(spec.parameters),
        "output": {
            "s3": {
                "bucket": location.bucket,
                "prefix": location.prefix,
                "endpointUrl": settings.pod_s3_endpoint,
                "region": settings.s3_region,
            }
        },
        "progressIntervalSeconds": min(settings.progress_interval_seconds, 30),
        "failurePolicy": spec.failure_policy,
        **({"sharding": {"count": spec.parallelism}} if spec.parallelism > 1 else {}),
    }
