"""The runner configuration (docs/runner-contract.md, section 1), parsed and checked."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from evaluation_runner.errors import ConfigurationError

TASK_TYPES = ("multiple-choice", "generation", "classification")
METRICS = ("accuracy", "exact-match", "f1", "bleu", "chrf", "rouge-1", "rouge-2", "rouge-l")
FRAMEWORKS = ("builtin", "lm-eval")


@dataclass(frozen=True)
class EndpointConfig:
    url: str
    api: str = "chat"
    api_key_env: str | None = None
    timeout_seconds: float = 120
    max_retries: int = 5


@dataclass(frozen=True)
class DatasetConfig:
    uri: str
    format: str | None = None
    fields: dict[str, str] = field(default_factory=dict)

    def column(self, name: str) -> str:
        return self.fields.get(name) or name


@dataclass(frozen=True)
class BenchmarkConfig:
    name: str
    dataset: DatasetConfig
    task: str
    metrics: tuple[str, ...]
    limit: int | None = None
    weight: float = 1.0
    few_shot: int = 0
    labels: tuple[str, ...] | None = None

    @property
    def primary_metric(self) -> str:
        return self.metrics[0]


@dataclass(frozen=True)
class OutputConfig:
    bucket: str
    prefix: str
    endpoint_url: str | None = None
    region: str | None = None


@dataclass(frozen=True)
class RunnerConfig:
    task: dict[str, str]
    model_name: str
    endpoint: EndpointConfig | None
    source_uri: str | None
    framework: str
    benchmarks: tuple[BenchmarkConfig, ...]
    temperature: float
    max_tokens: int
    concurrency: int
    seed: int
    output: OutputConfig
    progress_interval_seconds: float
    raw: dict[str, Any]


def _require(obj: Any, key: str, path: str) -> Any:
    if not isinstance(obj, dict) or obj.get(key) in (None, ""):
        raise ConfigurationError(f"{path}.{key}: is required")
    return obj[key]


def _benchmark(raw: Any, index: int) -> BenchmarkConfig:
    path = f"benchmarks[{index}]"
    name = str(_require(raw, "name", path))
    dataset_raw = _require(raw, "dataset", path)
    uri = str(_require(dataset_raw, "uri", f"{path}.dataset"))
    fmt = dataset_raw.get("format")
    if fmt not in (None, "jsonl", "csv"):
        raise ConfigurationError(f"{path}.dataset.format: {fmt!r}: use jsonl or csv")
    task = str(_require(raw, "task", path))
    if task not in TASK_TYPES:
        raise ConfigurationError(f"{path}.task: {task!r}: use one of {', '.join(TASK_TYPES)}")
    metrics = raw.get("metrics") or []
    if not metrics:
        raise ConfigurationError(f"{path}.metrics: at least one metric is required")
    for metric in metrics:
        if metric not in METRICS:
            raise ConfigurationError(
                f"{path}.metrics: unknown metric {metric!r} (known: {', '.join(METRICS)})")
    limit = raw.get("limit")
    if limit is not None and (not isinstance(limit, int) or limit < 1):
        raise ConfigurationError(f"{path}.limit: must be a positive integer")
    labels = raw.get("labels")
    return BenchmarkConfig(
        name=name,
        dataset=DatasetConfig(uri=uri, format=fmt,
                              fields={k: str(v) for k, v in (dataset_raw.get("fields") or {})
                                      .items() if v}),
        task=task, metrics=tuple(str(m) for m in metrics), limit=limit,
        weight=float(raw.get("weight", 1.0)), few_shot=int(raw.get("fewShot") or 0),
        labels=tuple(str(x) for x in labels) if labels else None,
    )


def parse_config(raw: Any) -> RunnerConfig:
    if not isinstance(raw, dict):
        raise ConfigurationError("config: must be a JSON object")
    if raw.get("version") != 1:
        raise ConfigurationError(f"version: {raw.get('version')!r} is not supported (expected 1)")
    model = _require(raw, "model", "config")
    endpoint_raw, source_raw = model.get("endpoint"), model.get("source")
    if bool(endpoint_raw) == bool(source_raw):
        raise ConfigurationError("model: set exactly one of model.endpoint or model.source")
    endpoint = None
    if endpoint_raw:
        url = str(_require(endpoint_raw, "url", "model.endpoint"))
        if not url.startswith(("http://", "https://")):
            raise ConfigurationError(f"model.endpoint.url: {url!r} is not an http(s) URL")
        api = str(endpoint_raw.get("api") or "chat")
        if api not in ("chat", "completions"):
            raise ConfigurationError(f"model.endpoint.api: {api!r}: use chat or completions")
        endpoint = EndpointConfig(
            url=url.rstrip("/"), api=api, api_key_env=endpoint_raw.get("apiKeyEnv"),
            timeout_seconds=float(endpoint_raw.get("timeoutSeconds") or 120),
            max_retries=int(endpoint_raw.get("maxRetries", 5)),
        )
    framework = str((raw.get("framework") or {}).get("name") or "builtin")
    if framework not in FRAMEWORKS:
        raise ConfigurationError(f"framework.name: {framework!r}: use builtin or lm-eval")
    benchmarks_raw = raw.get("benchmarks") or []
    if not benchmarks_raw:
        raise ConfigurationError("benchmarks: at least one benchmark is required")
    benchmarks = tuple(_benchmark(b, i) for i, b in enumerate(benchmarks_raw))
    names = [b.name for b in benchmarks]
    if len(set(names)) != len(names):
        raise ConfigurationError("benchmarks: names must be unique")
    params = raw.get("parameters") or {}
    s3 = _require(_require(raw, "output", "config"), "s3", "output")
    prefix = str(_require(s3, "prefix", "output.s3"))
    if not prefix.endswith("/") or ".." in prefix.split("/"):
        raise ConfigurationError(f"output.s3.prefix: {prefix!r} must end in / and have no '..'")
    concurrency = int(params.get("concurrency", 16))
    if concurrency < 1:
        raise ConfigurationError("parameters.concurrency: must be >= 1")
    return RunnerConfig(
        task=dict(raw.get("task") or {}), model_name=str(_require(model, "name", "model")),
        endpoint=endpoint,
        source_uri=str(source_raw["uri"]) if source_raw else None,
        framework=framework, benchmarks=benchmarks,
        temperature=float(params.get("temperature", 0.0)),
        max_tokens=int(params.get("maxTokens", 256)), concurrency=concurrency,
        seed=int(params.get("seed", 1234)),
        output=OutputConfig(bucket=str(_require(s3, "bucket", "output.s3")), prefix=prefix,
                            endpoint_url=s3.get("endpointUrl"), region=s3.get("region")),
        progress_interval_seconds=float(raw.get("progressIntervalSeconds", 10)),
        raw=raw,
    )


def load_config(path: Path) -> RunnerConfig:
    try:
        text = path.read_text()
    except OSError as error:
        raise ConfigurationError(f"config file {path}: {error.strerror}") from error
    try:
        raw = json.loads(text)
    except ValueError as error:
        raise ConfigurationError(f"config file {path}: not valid JSON: {error}") from error
    return parse_config(raw)
