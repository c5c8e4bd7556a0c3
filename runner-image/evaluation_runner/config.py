"""The runner configuration (docs/runner-contract.md, section 1), parsed and checked."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from evaluation_runner.errors import ConfigurationError
from evaluation_runner.metrics import (
    BLEU_TOKENIZERS,
    DEFAULT_BOOTSTRAP_ITERATIONS,
    EXACT_MATCH_NORMALIZATIONS,
    F1_AVERAGES,
    METRIC_NAMES,
    OPTION_GROUPS,
    REGISTRY,
    ROUGE_TOKENIZERS,
    BleuOptions,
    ExactMatchOptions,
    F1Options,
    MetricOptions,
    RougeOptions,
    bleu_tokenizer_missing,
    default_bleu_tokenizer,
    default_rouge_tokenizer,
)
from evaluation_runner.metrics import TASK_TYPES as TASK_TYPES

METRICS = METRIC_NAMES
MAX_BOOTSTRAP_ITERATIONS = 100_000
# metricOptions keys: one per option group a registered metric reads.
OPTION_KEYS = OPTION_GROUPS
FRAMEWORKS = ("builtin", "lm-eval")
# What a benchmark that cannot be scored does to the run (docs/runner-contract.md, section 1):
# FailFast fails the run at once; Continue scores the others and reports PartiallyFailed.
FAILURE_POLICIES = ("FailFast", "Continue")
FAIL_FAST, CONTINUE = FAILURE_POLICIES
# spec.parallelism's maximum (the CRD's): one Indexed Job of at most this many pods.
MAX_SHARDS = 64


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
    language: str | None = None
    options: MetricOptions = field(default_factory=MetricOptions)

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
class WatchdogConfig:
    """A request older than the endpoint timeout plus `request_margin_seconds`, or no sample
    finished for `stall_seconds`, fails the attempt (exit 75) instead of hanging forever."""

    request_margin_seconds: float = 60.0
    stall_seconds: float = 1800.0


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
    watchdog: WatchdogConfig = field(default_factory=WatchdogConfig)
    # A config without the key (an operator that predates it) keeps the old behaviour.
    failure_policy: str = FAIL_FAST
    # How many pods share the samples (sharding.count; 1: one pod does everything).
    shards: int = 1

    @property
    def continues_on_failure(self) -> bool:
        """failurePolicy Continue, on a run of one pod: a sharded run fails fast, since a
        shard cannot leave a benchmark out of the merge."""
        return self.failure_policy == CONTINUE and self.shards == 1


def _require(obj: Any, key: str, path: str) -> Any:
    if not isinstance(obj, dict) or obj.get(key) in (None, ""):
        raise ConfigurationError(f"{path}.{key}: is required")
    return obj[key]


def _benchmark(raw: Any, index: int, seed: int = 1234) -> BenchmarkConfig:
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
        if task not in REGISTRY[metric].tasks:
            raise ConfigurationError(
                f"{path}.metrics: {metric} does not apply to {task} benchmarks (it applies to "
                f"{', '.join(REGISTRY[metric].tasks)})")
    limit = raw.get("limit")
    if limit is not None and (not isinstance(limit, int) or limit < 1):
        raise ConfigurationError(f"{path}.limit: must be a positive integer")
    labels = raw.get("labels")
    language = raw.get("language")
    if language is not None and (not isinstance(language, str)
                                 or not re.fullmatch(r"[A-Za-z]{2,3}(-[A-Za-z0-9]{1,8})*",
                                                     language)):
        raise ConfigurationError(f"{path}.language: {language!r} is not a language code like "
                                 "en, de, zh or pt-BR")
    options = _metric_options(raw.get("metricOptions"), f"{path}.metricOptions", language,
                              labels=tuple(str(x) for x in labels) if labels else None,
                              seed=seed)
    if (options.f1.average == "binary" and "f1" in metrics and task != "generation"
            and options.labels and options.f1.positive_label not in options.labels):
        raise ConfigurationError(f"{path}.metricOptions.f1.positiveLabel: "
                                 f"{options.f1.positive_label!r} is not one of the labels")
    return BenchmarkConfig(
        name=name,
        dataset=DatasetConfig(uri=uri, format=fmt,
                              fields={k: str(v) for k, v in (dataset_raw.get("fields") or {})
                                      .items() if v}),
        task=task, metrics=tuple(str(m) for m in metrics), limit=limit,
        weight=float(raw.get("weight", 1.0)), few_shot=int(raw.get("fewShot") or 0),
        labels=tuple(str(x) for x in labels) if labels else None,
        language=language, options=options,
    )


def _choice(raw: dict[str, Any], key: str, allowed: tuple[str, ...], default: str,
            path: str) -> str:
    value = raw.get(key, default)
    if value is None:
        return default
    if value not in allowed:
        raise ConfigurationError(f"{path}.{key}: {value!r}: use one of {', '.join(allowed)}")
    return str(value)


def _flag(raw: dict[str, Any], key: str, path: str) -> bool:
    value = raw.get(key, False)
    if not isinstance(value, bool):
        raise ConfigurationError(f"{path}.{key}: must be true or false")
    return value


def _group(raw: dict[str, Any], key: str, path: str) -> dict[str, Any]:
    value = raw.get(key) or {}
    if not isinstance(value, dict):
        raise ConfigurationError(f"{path}.{key}: must be an object")
    return value


def _metric_options(raw: Any, path: str, language: str | None,
                    labels: tuple[str, ...] | None, seed: int) -> MetricOptions:
    raw = raw or {}
    if not isinstance(raw, dict):
        raise ConfigurationError(f"{path}: must be an object")
    unknown = set(raw) - {*OPTION_KEYS, "bootstrapIterations"}
    if unknown:
        raise ConfigurationError(f"{path}: unknown option(s) {', '.join(sorted(unknown))} "
                                 f"(known: {', '.join(OPTION_KEYS)}, bootstrapIterations)")
    bleu, rouge = _group(raw, "bleu", path), _group(raw, "rouge", path)
    f1, em = _group(raw, "f1", path), _group(raw, "exactMatch", path)
    average = _choice(f1, "average", F1_AVERAGES, "macro", f"{path}.f1")
    positive = f1.get("positiveLabel")
    if average == "binary" and positive in (None, ""):
        raise ConfigurationError(f"{path}.f1.positiveLabel: required with average: binary")
    normalize = _choice(em, "normalize", EXACT_MATCH_NORMALIZATIONS, "squad",
                        f"{path}.exactMatch")
    flags = {k: _flag(em, k, f"{path}.exactMatch")
             for k in ("ignoreCase", "ignorePunctuation", "ignoreNumbers")}
    regexes = em.get("regexesToIgnore") or []
    if not isinstance(regexes, list):
        raise ConfigurationError(f"{path}.exactMatch.regexesToIgnore: must be a list")
    for index, pattern in enumerate(regexes):
        try:
            re.compile(str(pattern))
        except re.error as error:
            raise ConfigurationError(
                f"{path}.exactMatch.regexesToIgnore[{index}]: {pattern!r}: {error}") from error
    if normalize == "squad" and (any(flags.values()) or regexes):
        raise ConfigurationError(f"{path}.exactMatch: ignoreCase, ignorePunctuation, "
                                 "ignoreNumbers and regexesToIgnore apply with normalize: none "
                                 "(squad already normalises)")
    iterations = raw.get("bootstrapIterations", DEFAULT_BOOTSTRAP_ITERATIONS)
    if not isinstance(iterations, int) or isinstance(iterations, bool) or not (
            0 <= iterations <= MAX_BOOTSTRAP_ITERATIONS):
        raise ConfigurationError(f"{path}.bootstrapIterations: an integer from 0 (off) to "
                                 f"{MAX_BOOTSTRAP_ITERATIONS}")
    tokenize = _choice(bleu, "tokenize", BLEU_TOKENIZERS, default_bleu_tokenizer(language),
                       f"{path}.bleu")
    missing = bleu_tokenizer_missing(tokenize)
    if missing:
        raise ConfigurationError(
            f"{path}.bleu.tokenize: {tokenize} needs {' and '.join(missing)} (sacrebleu's "
            f"[{tokenize[:2]}] extra), which this runner image does not have; use char (the "
            "default for ja) or intl, or a runner image with that extra installed")
    return MetricOptions(
        bleu=BleuOptions(tokenize=tokenize, lowercase=_flag(bleu, "lowercase", f"{path}.bleu")),
        rouge=RougeOptions(
            tokenizer=_choice(rouge, "tokenizer", ROUGE_TOKENIZERS,
                              default_rouge_tokenizer(language), f"{path}.rouge"),
            use_stemmer=_flag(rouge, "useStemmer", f"{path}.rouge")),
        f1=F1Options(average=average, positive_label=None if positive is None else str(positive)),
        exact_match=ExactMatchOptions(
            normalize=normalize, ignore_case=flags["ignoreCase"],
            ignore_punctuation=flags["ignorePunctuation"], ignore_numbers=flags["ignoreNumbers"],
            regexes_to_ignore=tuple(str(r) for r in regexes)),
        bootstrap_iterations=iterations, seed=seed, labels=labels,
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
    params = raw.get("parameters") or {}
    seed = int(params.get("seed", 1234))
    benchmarks = tuple(_benchmark(b, i, seed) for i, b in enumerate(benchmarks_raw))
    loglikelihood = endpoint is None or endpoint.api == "completions"
    for i, b in enumerate(benchmarks):
        for metric in b.metrics:
            if REGISTRY[metric].needs_loglikelihood and (
                    not loglikelihood or framework != "builtin"):
                raise ConfigurationError(
                    f"benchmarks[{i}].metrics: {metric} needs the log-likelihood of each "
                    "choice: use model.endpoint.api: completions (with prompt logprobs) or "
                    "model.source, and the builtin framework")
    names = [b.name for b in benchmarks]
    if len(set(names)) != len(names):
        raise ConfigurationError("benchmarks: names must be unique")
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
        seed=seed,
        output=OutputConfig(bucket=str(_require(s3, "bucket", "output.s3")), prefix=prefix,
                            endpoint_url=s3.get("endpointUrl"), region=s3.get("region")),
        progress_interval_seconds=float(raw.get("progressIntervalSeconds", 10)),
        raw=raw, watchdog=_watchdog(raw.get("watchdog")),
        failure_policy=_failure_policy(raw.get("failurePolicy", FAIL_FAST)),
        shards=_shards(raw.get("sharding"), framework),
    )


def _failure_policy(value: Any) -> str:
    if value not in FAILURE_POLICIES:
        raise ConfigurationError(f"failurePolicy: {value!r}: use {' or '.join(FAILURE_POLICIES)}")
    return str(value)


def _shards(raw: Any, framework: str) -> int:
    raw = raw or {}
    if not isinstance(raw, dict):
        raise ConfigurationError("sharding: must be an object")
    count = raw.get("count", 1)
    if not isinstance(count, int) or isinstance(count, bool) or not 1 <= count <= MAX_SHARDS:
        raise ConfigurationError(f"sharding.count: {count!r}: an integer from 1 to {MAX_SHARDS}")
    if count > 1 and framework != "builtin":
        raise ConfigurationError(
            "sharding.count: a sharded run needs the builtin framework (lm-eval runs each "
            "benchmark whole); use parallelism 1 with lm-eval")
    return count


def _watchdog(raw: Any) -> WatchdogConfig:
    raw = raw or {}
    if not isinstance(raw, dict):
        raise ConfigurationError("watchdog: must be an object")
    values = {}
    for key, attribute in (("requestMarginSeconds", "request_margin_seconds"),
                           ("stallSeconds", "stall_seconds")):
        value = raw.get(key)
        if value is None:
            continue
        if not isinstance(value, int | float) or isinstance(value, bool) or value <= 0:
            raise ConfigurationError(f"watchdog.{key}: must be a positive number of seconds")
        values[attribute] = float(value)
    return WatchdogConfig(**values)


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
