"""One evaluation run: datasets in, model answers, metrics, the bundle out to S3."""

from __future__ import annotations

import datetime
import functools
import time
from importlib import metadata
from typing import Any

from evaluation_runner import layout, lm_eval_adapter, termination
from evaluation_runner.bundle import BenchmarkResult, bundle_files, summary_document, zip_bundle
from evaluation_runner.config import BenchmarkConfig, RunnerConfig
from evaluation_runner.datasets import LoadedDataset, load_dataset
from evaluation_runner.errors import ConfigurationError
from evaluation_runner.metrics import as_score, compute, overall_score, per_sample_scores
from evaluation_runner.model_client import ModelClient, resolve_api_key
from evaluation_runner.progress import ProgressTracker
from evaluation_runner.storage import ResultsWriter, s3_client
from evaluation_runner.tasks import Generation, Prediction, predict_all

RUNNER_VERSION = "0.1.0"


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def score_benchmark(benchmark: BenchmarkConfig, dataset: LoadedDataset,
                    predictions: list[Prediction]) -> BenchmarkResult:
    preds = [p.prediction for p in predictions]
    refs = [p.sample.reference for p in predictions]
    labels = list(benchmark.labels) if benchmark.labels else None
    metric_values = {m: compute(m, benchmark.task, preds, refs, labels)
                     for m in benchmark.metrics}
    samples = []
    for p in predictions:
        record: dict[str, Any] = {"index": p.sample.index, "input": p.sample.prompt,
                                  "prompt": p.prompt, "prediction": p.prediction,
                                  "reference": p.sample.reference}
        if p.sample.choices is not None:
            record["choices"] = list(p.sample.choices)
        if p.choice_logprobs is not None:
            record["choiceLogprobs"] = list(p.choice_logprobs)
        record["scores"] = {m: s for m in benchmark.metrics if (s := per_sample_scores(
            m, benchmark.task, p.prediction, p.sample.reference)) is not None}
        samples.append(record)
    primary = benchmark.primary_metric
    return BenchmarkResult(
        name=benchmark.name, task=benchmark.task, primary_metric=primary,
        score=as_score(primary, metric_values[primary].value), weight=benchmark.weight,
        metrics=metric_values, samples=samples,
        dataset={"uri": dataset.uri, "sha256": dataset.sha256, "rows": dataset.rows,
                 "samples": len(dataset.samples), "fewShotExamples": len(dataset.examples)},
    )


def framework_document(name: str, framework_results: dict[str, dict[str, Any]]
                       ) -> dict[str, Any]:
    libraries = {p: _version(p) for p in ("sacrebleu", "rouge-score", "scikit-learn")}
    if name == "lm-eval":
        # Our metrics over lm-eval's answers; lm-eval's own figures in frameworkResults.
        return {"name": "lm-eval", "version": lm_eval_adapter.lm_eval_version(),
                "runnerVersion": RUNNER_VERSION, "libraries": libraries,
                "frameworkResults": framework_results}
    return {"name": "builtin", "version": RUNNER_VERSION, "libraries": libraries}


def run(config: RunnerConfig, writer: ResultsWriter, dataset_s3: Any | None = None) -> bytes:
    """Evaluate, upload the bundle, and return the termination message. Raises RunnerError."""
    started, clock = _now(), time.monotonic()
    api_key: str | None = None
    if config.framework == "lm-eval":
        lm_eval_adapter.require_lm_eval(config)
    if config.endpoint is None:
        from evaluation_runner.local_model import local_client

        client: Any = local_client(config)
    else:
        api_key = resolve_api_key(config.endpoint)
        client = ModelClient(config.endpoint, config.model_name, api_key=api_key)
    s3 = dataset_s3 or (s3_client(config.output.endpoint_url, config.output.region)
                        if any(b.dataset.uri.startswith("s3://") for b in config.benchmarks)
                        else None)
    datasets = [load_dataset(b, i, s3) for i, b in enumerate(config.benchmarks)]
    generation = Generation(config.max_tokens, config.temperature, config.seed)
    totals = {b.name: len(d.samples) for b, d in zip(config.benchmarks, datasets, strict=True)}
    results = []
    framework_results: dict[str, dict[str, Any]] = {}
    tracker = ProgressTracker(totals, lambda doc: writer.put("progress.json", doc,
                                                             "application/json"),
                              config.progress_interval_seconds)
    # Before any model time is spent: a results location we cannot write to fails the run
    # now (78 for a missing bucket or bad credentials, 75 for an outage), not hours later.
    writer.put("progress.json", tracker.document(), "application/json")
    with tracker:
        for index, (benchmark, dataset) in enumerate(zip(config.benchmarks, datasets,
                                                         strict=True)):
            if config.framework == "lm-eval":
                run_result = lm_eval_adapter.run_benchmark(config, benchmark, index, dataset,
                                                           api_key)
                predictions = run_result.predictions
                framework_results[benchmark.name] = run_result.native
                for _ in predictions:
                    tracker.advance(benchmark.name)
            else:
                predictions = predict_all(
                    client, benchmark, dataset.samples, dataset.examples, generation,
                    config.concurrency,
                    on_done=functools.partial(tracker.advance, benchmark.name))
            results.append(score_benchmark(benchmark, dataset, predictions))
    overall = overall_score([(r.score, r.weight) for r in results])
    context = {
        "task": config.task,
        "model": {"name": config.model_name,
                  "endpoint": config.endpoint.url if config.endpoint else None,
                  "api": config.endpoint.api if config.endpoint else None,
                  "source": config.source_uri},
        "framework": framework_document(config.framework, framework_results),
        "parameters": {"temperature": config.temperature, "maxTokens": config.max_tokens,
                       "concurrency": config.concurrency, "seed": config.seed},
        "timings": {"startedAt": started, "finishedAt": _now(),
                    "seconds": round(time.monotonic() - clock, 3)},
    }
    return publish(writer, results, overall, context, tracker.document())


def publish(writer: ResultsWriter, results: list[BenchmarkResult], overall: float,
            context: dict[str, Any], progress: bytes) -> bytes:
    files = bundle_files(results, summary_document(results, overall, context))
    for name, body in files.items():
        kind = "application/json" if name.endswith(".json") else (
            "text/csv" if name.endswith(".csv") else "application/x-ndjson")
        writer.put(name, body, kind)
    writer.put(layout.RESULTS_ZIP, zip_bundle(files), "application/zip")
    writer.put("progress.json", progress, "application/json")
    compact = [{"name": r.name, "score": r.score, "primaryMetric": r.primary_metric,
                "metrics": {k: v.value for k, v in r.metrics.items()},
                "samples": len(r.samples)} for r in results]
    return termination.success_message(overall, compact, writer.uri(),
                                       writer.uri(layout.RESULTS_ZIP))


def require_endpoint(config: RunnerConfig) -> None:
    if config.endpoint is None and config.source_uri is None:
        raise ConfigurationError("model: neither endpoint nor source is set")
