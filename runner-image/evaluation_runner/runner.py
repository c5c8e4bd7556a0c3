"""One evaluation run: datasets in, model answers, metrics, the bundle out to S3."""

from __future__ import annotations

import dataclasses
import datetime
import functools
import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from importlib import metadata
from typing import Any

from evaluation_runner import layout, lm_eval_adapter, sharding, termination
from evaluation_runner.bundle import (
    BenchmarkFailure,
    BenchmarkResult,
    bundle_files,
    summary_document,
    times,
    zip_bundle,
)
from evaluation_runner.checkpoints import BenchmarkCheckpoint, CheckpointStore
from evaluation_runner.config import BenchmarkConfig, RunnerConfig
from evaluation_runner.datasets import LoadedDataset, load_dataset
from evaluation_runner.errors import (
    ConfigurationError,
    RequestRejected,
    RunnerError,
    TransientError,
)
from evaluation_runner.metrics import REGISTRY, Answer, as_score, compute_metric, overall_score
from evaluation_runner.model_client import ModelClient, resolve_api_key
from evaluation_runner.progress import BenchmarkState, ProgressTracker
from evaluation_runner.storage import ResultsWriter, s3_client
from evaluation_runner.tasks import (
    Generation,
    Prediction,
    label_set,
    predict_all,
    predict_batched,
)
from evaluation_runner.watchdog import Watchdog

RUNNER_VERSION = "0.1.0"
log = logging.getLogger("evaluation_runner")
LOG_KEY = layout.RUNNER_LOG
# Kubernetes' default grace period is 30 s: requests under way get a few to finish, then
# the answers are saved and the log uploaded before the SIGKILL.
SIGTERM_DRAIN_SECONDS = 5.0
# A failed benchmark's error in the 4 KiB termination message (summary.json has more).
TERMINATION_ERROR_LENGTH = 200


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def answers_of(predictions: list[Prediction]) -> list[Answer]:
    return [Answer(p.prediction, p.sample.references, p.sample.choices, p.choice_logprobs)
            for p in predictions]


def score_benchmark(benchmark: BenchmarkConfig, dataset: LoadedDataset,
                    predictions: list[Prediction]) -> BenchmarkResult:
    answers = answers_of(predictions)
    metric_values = {m: compute_metric(m, benchmark.task, answers, benchmark.options)
                     for m in benchmark.metrics}
    samples = []
    for p, answer in zip(predictions, answers, strict=True):
        record: dict[str, Any] = {"index": p.sample.index, "input": p.sample.prompt,
                                  "prompt": p.prompt, "prediction": p.prediction,
                                  "reference": p.sample.reference}
        if p.sample.more_references:
            record["references"] = list(p.sample.references)
        if p.sample.choices is not None:
            record["choices"] = list(p.sample.choices)
        if p.choice_logprobs is not None:
            record["choiceLogprobs"] = list(p.choice_logprobs)
        record["scores"] = {m: s for m in benchmark.metrics if (
            s := REGISTRY[m].sample_score(answer, benchmark.task, benchmark.options))
            is not None}
        samples.append(record)
    primary = benchmark.primary_metric
    return BenchmarkResult(
        name=benchmark.name, task=benchmark.task, primary_metric=primary,
        score=as_score(primary, metric_values[primary].value), weight=benchmark.weight,
        metrics=metric_values, samples=samples, options=options_document(benchmark),
        dataset={"uri": dataset.uri, "sha256": dataset.sha256, "rows": dataset.rows,
                 "samples": len(dataset.samples), "fewShotExamples": len(dataset.examples)},
    )


def options_document(benchmark: BenchmarkConfig) -> dict[str, Any]:
    """The metric options in force (defaults and language choices resolved)."""
    options = benchmark.options
    return {"language": benchmark.language,
            "bleu": {"tokenize": options.bleu.tokenize, "lowercase": options.bleu.lowercase},
            "rouge": {"tokenizer": options.rouge.tokenizer,
                      "useStemmer": options.rouge.use_stemmer},
            "f1": {"average": options.f1.average, "positiveLabel": options.f1.positive_label},
            "exactMatch": {"normalize": options.exact_match.normalize,
                           "ignoreCase": options.exact_match.ignore_case,
                           "ignorePunctuation": options.exact_match.ignore_punctuation,
                           "ignoreNumbers": options.exact_match.ignore_numbers,
                           "regexesToIgnore": list(options.exact_match.regexes_to_ignore)},
            "bootstrapIterations": options.bootstrap_iterations, "seed": options.seed}


def framework_document(name: str, framework_results: dict[str, dict[str, Any]]
                       ) -> dict[str, Any]:
    libraries = {p: _version(p) for p in ("sacrebleu", "rouge-score", "scikit-learn")}
    if name == "lm-eval":
        # Our metrics over lm-eval's answers; lm-eval's own figures in frameworkResults.
        return {"name": "lm-eval", "version": lm_eval_adapter.lm_eval_version(),
                "runnerVersion": RUNNER_VERSION, "libraries": libraries,
                "frameworkResults": framework_results}
    return {"name": "builtin", "version": RUNNER_VERSION, "libraries": libraries}


def _abort_process(error: RunnerError) -> None:
    os._exit(error.exit_code)


def run(config: RunnerConfig, writer: ResultsWriter, dataset_s3: Any | None = None,
        abort: Callable[[RunnerError], None] = _abort_process,
        log_contents: Callable[[], bytes] | None = None, shard: int | None = None) -> bytes:
    """Evaluate, upload the bundle, and return the termination message. Raises RunnerError.

    `abort` is called from the watchdog's thread when the attempt hangs; it must end the
    process (the default does, with the error's exit code). `shard`: answer only that
    shard's samples (sharding.py) and write them below shards/<shard>/, no scores."""
    started, clock = _now(), time.monotonic()
    if shard is not None:
        writer = writer.below(layout.shard_prefix(shard))
    api_key: str | None = None
    checkpoints = CheckpointStore(writer)

    def give_up(error: RunnerError, drain_seconds: float = 0.0) -> None:
        # Keep what was answered for the retry; bounded, since S3 may be what hangs.
        saver = threading.Thread(target=_best_effort, daemon=True,
                                 args=(lambda: checkpoints.stop(drain_seconds),))
        saver.start()
        saver.join(timeout=drain_seconds + 20)
        abort(error)

    watchdog = Watchdog(
        (config.endpoint.timeout_seconds + config.watchdog.request_margin_seconds)
        if config.endpoint else None, config.watchdog.stall_seconds, give_up)
    if config.framework == "lm-eval":
        lm_eval_adapter.require_lm_eval(config)
    if config.endpoint is None:
        from evaluation_runner.local_model import local_client

        client: Any = local_client(config)
    else:
        api_key = resolve_api_key(config.endpoint)
        client = ModelClient(config.endpoint, config.model_name, api_key=api_key,
                             watchdog=watchdog)
    whole, unreadable = load_datasets(config, _datasets_s3(config, dataset_s3))
    # A shard's prompts list the labels of the whole dataset, as one pod's would.
    labels = [label_set(b, d.samples, d.examples) if d else []
              for b, d in zip(config.benchmarks, whole, strict=True)]
    datasets: list[LoadedDataset | None] = list(whole)
    if shard is not None:  # a sharded run fails fast: no dataset is missing here
        datasets = list(sharding.shard_datasets(_all(whole), config.shards, shard))
        log.info("shard %d of %d: %d samples", shard, config.shards,
                 sum(len(d.samples) for d in _all(datasets)))
    generation = Generation(config.max_tokens, config.temperature, config.seed)
    totals = {b.name: len(d.samples) if d else 0
              for b, d in zip(config.benchmarks, datasets, strict=True)}
    framework_results: dict[str, dict[str, Any]] = {}

    def publish_progress(document: bytes) -> None:
        writer.put(layout.PROGRESS_JSON, document, "application/json")
        checkpoints.flush()

    tracker = ProgressTracker(totals, publish_progress, config.progress_interval_seconds)
    for name, error in unreadable.items():
        tracker.fail(name, str(error))
    # Before any model time is spent: a results location we cannot write to fails the run
    # now (78 for a missing bucket or bad credentials, 75 for an outage), not hours later.
    writer.put(layout.PROGRESS_JSON, tracker.document(), "application/json")

    def on_sigterm(signum: int, frame: Any) -> None:
        # The pod is being stopped (preemption, eviction, deletion): save the answers for
        # the retry within the grace period, report, exit.
        threading.Thread(target=give_up, daemon=True, args=(TransientError(
            "stopped by SIGTERM (preemption, eviction or deletion of the pod); answered "
            "samples are checkpointed and a retry resumes from them", reason="RunnerError"),
            SIGTERM_DRAIN_SECONDS)).start()

    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, on_sigterm) if in_main_thread else None
    try:
        answers = _evaluate(config, client, datasets, labels, generation, checkpoints, tracker,
                            watchdog, api_key, framework_results)
    finally:
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous)
    timings = {"startedAt": started, "finishedAt": _now(),
               "seconds": round(time.monotonic() - clock, 3)}
    if shard is not None:
        return sharding.publish_shard(writer, config, shard, _all(whole), _all(answers),
                                      checkpoints.report(), timings, tracker.document())
    results = _scored(config, datasets, answers, tracker)
    failures = failures_of(config, tracker)
    if not results:  # nothing finished: a plain failure, as with FailFast
        raise all_failed(failures, unreadable)
    overall = overall_score([(r.score, r.weight) for r in results])
    context = run_context(config, framework_results, checkpoints.report(), timings)
    return publish(writer, results, overall, context, tracker.document(), log_contents,
                   failures)


def run_context(config: RunnerConfig, framework_results: dict[str, dict[str, Any]],
                resumed: dict[str, Any], timings: dict[str, Any]) -> dict[str, Any]:
    """summary.json's description of the run, after the scores."""
    return {
        "task": config.task,
        "model": {"name": config.model_name,
                  "endpoint": config.endpoint.url if config.endpoint else None,
                  "api": config.endpoint.api if config.endpoint else None,
                  "source": config.source_uri},
        "framework": framework_document(config.framework, framework_results),
        "parameters": {"temperature": config.temperature, "maxTokens": config.max_tokens,
                       "concurrency": config.concurrency, "seed": config.seed},
        "resumed": resumed,
        "timings": timings,
    }


def merge(config: RunnerConfig, writer: ResultsWriter, dataset_s3: Any | None = None,
          log_contents: Callable[[], bytes] | None = None) -> bytes:
    """The merge of a sharded run: every shard's answers, scored as one run would score
    them, and the bundle at the task's prefix. Returns the termination message."""
    clock = time.monotonic()
    # A sharded run fails fast: every dataset is there.
    loaded, _ = load_datasets(config, _datasets_s3(config, dataset_s3))
    datasets = _all(loaded)
    gathered = sharding.gather(writer, config, datasets)
    results = [score_benchmark(b, d, p)
               for b, d, p in zip(config.benchmarks, datasets, gathered.answers, strict=True)]
    overall = overall_score([(r.score, r.weight) for r in results])
    timings = {"startedAt": gathered.started_at or _now(), "finishedAt": _now(),
               "seconds": round(time.monotonic() - clock, 3)}
    context = run_context(config, {}, gathered.resumed, timings)
    context["shards"] = gathered.bookkeeping
    totals = {b.name: len(d.samples) for b, d in zip(config.benchmarks, datasets, strict=True)}
    tracker = ProgressTracker(totals, lambda _: None, config.progress_interval_seconds)
    for name in totals:
        tracker.completed_elsewhere(name)
    log.info("merged %d shards: overall score %s", config.shards, overall)
    return publish(writer, results, overall, context, tracker.document(), log_contents)


def _datasets_s3(config: RunnerConfig, given: Any | None) -> Any | None:
    """The S3 client datasets are read with (None when no dataset is in S3)."""
    return given or (s3_client(config.output.endpoint_url, config.output.region)
                     if any(b.dataset.uri.startswith("s3://") for b in config.benchmarks)
                     else None)


def load_datasets(config: RunnerConfig, s3: Any | None
                  ) -> tuple[list[LoadedDataset | None], dict[str, ConfigurationError]]:
    """Every benchmark's dataset, before any model time is spent. One that cannot be read
    fails the run (FailFast) or only its benchmark (Continue: None in its place, the error
    by name). An outage (TransientError) is the run's either way: a retry may read it."""
    datasets: list[LoadedDataset | None] = []
    unreadable: dict[str, ConfigurationError] = {}
    for index, benchmark in enumerate(config.benchmarks):
        try:
            dataset = load_dataset(benchmark, index, s3)
        except ConfigurationError as error:
            if not config.continues_on_failure:
                raise
            log.error("benchmark %s failed: %s; the others go on (failurePolicy: Continue)",
                      benchmark.name, error)
            datasets.append(None)
            unreadable[benchmark.name] = error
            continue
        log.info("benchmark %s: %d samples from %s (sha256 %s)", benchmark.name,
                 len(dataset.samples), dataset.uri, dataset.sha256)
        datasets.append(dataset)
    if unreadable and len(unreadable) == len(config.benchmarks):
        raise all_failed([], unreadable)
    return datasets, unreadable


def failures_of(config: RunnerConfig, tracker: ProgressTracker) -> list[BenchmarkFailure]:
    failures = []
    for benchmark in config.benchmarks:
        entry = tracker.entry(benchmark.name)
        if entry.state is BenchmarkState.FAILED:
            failures.append(BenchmarkFailure(benchmark.name, benchmark.task, benchmark.weight,
                                             entry.error or "failed", entry.started_at,
                                             entry.finished_at))
    return failures


def all_failed(failures: list[BenchmarkFailure], unreadable: dict[str, ConfigurationError]
               ) -> ConfigurationError:
    """No benchmark finished: the run fails as it would have with FailFast."""
    if len(unreadable) == 1 and not failures:
        return next(iter(unreadable.values()))
    errors = {**{name: str(e) for name, e in unreadable.items()},
              **{f.name: f.error for f in failures}}
    if len(errors) == 1:
        return ConfigurationError(next(iter(errors.values())))
    return ConfigurationError("every benchmark failed: " + "; ".join(
        f"{name}: {error}" for name, error in errors.items()))


def _all(items: list[Any]) -> list[Any]:
    """A sharded run fails fast, so none of its datasets or answers is missing."""
    if any(item is None for item in items):
        raise ConfigurationError("a sharded run cannot skip a benchmark (failurePolicy "
                                 "Continue applies to parallelism 1 only)")
    return items


def _scored(config: RunnerConfig, datasets: list[LoadedDataset | None],
            answers: list[list[Prediction] | None], tracker: ProgressTracker
            ) -> list[BenchmarkResult]:
    """The finished benchmarks' scores, with when each ran."""
    results = []
    for benchmark, dataset, predictions in zip(config.benchmarks, datasets, answers,
                                               strict=True):
        if dataset is None or predictions is None:
            continue
        entry = tracker.entry(benchmark.name)
        results.append(dataclasses.replace(score_benchmark(benchmark, dataset, predictions),
                                           started_at=entry.started_at,
                                           finished_at=entry.finished_at))
    return results


def _evaluate(config: RunnerConfig, client: Any, datasets: list[LoadedDataset | None],
              labels: list[list[str]], generation: Generation, checkpoints: CheckpointStore,
              tracker: ProgressTracker, watchdog: Watchdog, api_key: str | None,
              framework_results: dict[str, dict[str, Any]]) -> list[list[Prediction] | None]:
    """Every benchmark's answers, in dataset order; None for one that failed (Continue)."""
    results: list[list[Prediction] | None] = []

    def advance(name: str) -> None:
        tracker.advance(name)
        watchdog.progress()

    with tracker, watchdog:
        for index, (benchmark, dataset) in enumerate(zip(config.benchmarks, datasets,
                                                         strict=True)):
            if dataset is None:
                results.append(None)  # unreadable, already marked failed
                continue
            tracker.start(benchmark.name)
            try:
                predictions = _benchmark(config, client, index, benchmark, dataset,
                                         labels[index], generation, checkpoints, watchdog,
                                         api_key, framework_results,
                                         functools.partial(advance, benchmark.name))
            except RequestRejected as error:
                if not config.continues_on_failure:
                    raise
                log.error("benchmark %s failed: %s; the others go on (failurePolicy: "
                          "Continue)", benchmark.name, error)
                tracker.fail(benchmark.name, str(error))
                results.append(None)
                continue
            tracker.finish(benchmark.name)
            results.append(predictions)
    return results


def _benchmark(config: RunnerConfig, client: Any, index: int, benchmark: BenchmarkConfig,
               dataset: LoadedDataset, labels: list[str], generation: Generation,
               checkpoints: CheckpointStore, watchdog: Watchdog, api_key: str | None,
               framework_results: dict[str, dict[str, Any]], advance: Callable[[], None]
               ) -> list[Prediction]:
    checkpoint = checkpoints.open(config, benchmark, dataset, generation)
    native: dict[str, Any] | None = None
    if config.framework == "lm-eval":
        with watchdog.paused():
            predictions, native = _lm_eval_benchmark(config, benchmark, index, dataset,
                                                     api_key, checkpoint)
        framework_results[benchmark.name] = native
        for _ in predictions:
            advance()
    elif hasattr(client, "loglikelihood_many"):  # an in-pod model: batches
        predictions = predict_batched(client, benchmark, dataset.samples, dataset.examples,
                                      generation, on_done=advance, cache=checkpoint,
                                      labels=labels)
    else:
        predictions = predict_all(client, benchmark, dataset.samples, dataset.examples,
                                  generation, config.concurrency, on_done=advance,
                                  cache=checkpoint, labels=labels)
    checkpoint.finished(len(predictions), native)
    log.info("benchmark %s: answered (%d reused from checkpoints, %d requested)",
             benchmark.name, checkpoint.reused, checkpoint.requested)
    return predictions


def _best_effort(action: Callable[[], None]) -> None:
    try:
        action()
    except Exception as error:
        log.warning("while giving up: %s", error)


def _lm_eval_benchmark(config: RunnerConfig, benchmark: BenchmarkConfig, index: int,
                       dataset: LoadedDataset, api_key: str | None,
                       checkpoint: BenchmarkCheckpoint
                       ) -> tuple[list[Prediction], dict[str, Any]]:
    """A finished benchmark is reused from its answers; an interrupted one resumes from the
    snapshot of lm-eval's request cache (lm_eval_cache.py)."""
    done = checkpoint.reusable_done()
    if done is not None:
        cached = [checkpoint.get(sample) for sample in dataset.samples]
        if all(p is not None for p in cached):
            log.info("benchmark %s: finished by an earlier attempt, reused", benchmark.name)
            return [p for p in cached if p is not None], dict(done.get("native") or {})
    run_result = lm_eval_adapter.run_benchmark(config, benchmark, index, dataset, api_key,
                                               checkpoint)
    for position, prediction in enumerate(run_result.predictions):
        checkpoint.put(prediction.sample, prediction, reused=position in run_result.cached)
    return run_result.predictions, run_result.native


def publish(writer: ResultsWriter, results: list[BenchmarkResult], overall: float,
            context: dict[str, Any], progress: bytes,
            log_contents: Callable[[], bytes] | None = None,
            failures: list[BenchmarkFailure] | None = None) -> bytes:
    failures = failures or []
    files = bundle_files(results, summary_document(results, overall, context, failures))
    if log_contents is not None:
        files[LOG_KEY] = log_contents()
    for name, body in files.items():
        kind = "application/json" if name.endswith(".json") else (
            "text/csv" if name.endswith(".csv") else "text/plain" if name.endswith(".log")
            else "application/x-ndjson")
        writer.put(name, body, kind)
    writer.put(layout.RESULTS_ZIP, zip_bundle(files), "application/zip")
    writer.put(layout.PROGRESS_JSON, progress, "application/json")
    compact = [{"name": r.name, "score": r.score, "primaryMetric": r.primary_metric,
                "metrics": {k: v.value for k, v in r.metrics.items()},
                "samples": len(r.samples), **times(r.started_at, r.finished_at)}
               for r in results]
    compact += [{"name": f.name, "state": BenchmarkState.FAILED.value,
                 "error": f.error[:TERMINATION_ERROR_LENGTH],
                 **times(f.started_at, f.finished_at)} for f in failures]
    return termination.success_message(overall, compact, writer.uri(),
                                       writer.uri(layout.RESULTS_ZIP),
                                       writer.uri(LOG_KEY) if log_contents else None,
                                       partial=bool(failures))


def require_endpoint(config: RunnerConfig) -> None:
    if config.endpoint is None and config.source_uri is None:
        raise ConfigurationError("model: neither endpoint nor source is set")
