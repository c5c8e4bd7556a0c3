"""The results bundle (docs/runner-contract.md, section 2) and its one-file download."""

from __future__ import annotations

import csv
import io
import json
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from evaluation_runner import layout
from evaluation_runner.metrics import REGISTRY, MetricValue
from evaluation_runner.progress import MAX_ERROR_LENGTH, BenchmarkState


@dataclass(frozen=True)
class BenchmarkResult:
    name: str
    task: str
    primary_metric: str
    score: float
    weight: float
    metrics: dict[str, MetricValue]
    samples: list[dict[str, Any]]
    dataset: dict[str, Any]
    options: dict[str, Any] = field(default_factory=dict)  # the metric options in force
    started_at: str | None = None
    finished_at: str | None = None

    def metrics_json(self) -> dict[str, Any]:
        return {
            "name": self.name, "task": self.task, "primaryMetric": self.primary_metric,
            "score": self.score, "samples": len(self.samples),
            "metrics": {k: v.value for k, v in self.metrics.items()},
            "stderr": {k: v.stderr for k, v in self.metrics.items()},
            "sampleCounts": {k: v.samples for k, v in self.metrics.items()},
            "metricInfo": {k: {"scale": REGISTRY[k].scale,
                               "higherIsBetter": REGISTRY[k].higher_is_better,
                               "stderr": "bootstrap" if REGISTRY[k].is_corpus(self.task)
                               else "mean", "reference": REGISTRY[k].reference}
                           for k in self.metrics if k in REGISTRY},
            "metricOptions": self.options,
            "dataset": self.dataset,
        }


@dataclass(frozen=True)
class BenchmarkFailure:
    """A benchmark that could not be scored while the run went on (failurePolicy:
    Continue): no score, no metrics.json or samples.jsonl, its error in summary.json."""

    name: str
    task: str
    weight: float
    error: str
    started_at: str | None = None
    finished_at: str | None = None

    def summary_entry(self) -> dict[str, Any]:
        return {"name": self.name, "task": self.task, "state": BenchmarkState.FAILED.value,
                "error": self.error[:MAX_ERROR_LENGTH], "weight": self.weight,
                **times(self.started_at, self.finished_at)}


def times(started: str | None, finished: str | None) -> dict[str, str]:
    return {k: v for k, v in (("startedAt", started), ("finishedAt", finished)) if v}


def summary_document(results: list[BenchmarkResult], overall: float, context: dict[str, Any],
                     failures: Sequence[BenchmarkFailure] = ()) -> dict[str, Any]:
    """`overallScore` is over `results` only; with failures the summary says `partial`."""
    return {
        "overallScore": overall,
        **({"partial": True} if failures else {}),
        "benchmarks": [*({
            "name": r.name, "task": r.task, "state": BenchmarkState.COMPLETED.value,
            "primaryMetric": r.primary_metric, "score": r.score,
            "metrics": {k: v.value for k, v in r.metrics.items()},
            "stderr": {k: v.stderr for k, v in r.metrics.items()},
            "samples": len(r.samples), "weight": r.weight,
            **times(r.started_at, r.finished_at),
        } for r in results), *(f.summary_entry() for f in failures)],
        "datasets": [{"name": r.name, **r.dataset} for r in results],
        **context,
    }


def summary_csv(results: list[BenchmarkResult]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["benchmark", "metric", "value", "stderr", "samples", "primary"])
    for r in results:
        for name, value in r.metrics.items():
            writer.writerow([r.name, name, repr(value.value),
                             "" if value.stderr is None else repr(value.stderr), value.samples,
                             "yes" if name == r.primary_metric else "no"])
    return out.getvalue()


def bundle_files(results: list[BenchmarkResult], summary: dict[str, Any]) -> dict[str, bytes]:
    files = {
        layout.SUMMARY_JSON: json.dumps(summary, indent=2, ensure_ascii=False).encode(),
        layout.SUMMARY_CSV: summary_csv(results).encode(),
    }
    for r in results:
        files[layout.metrics_key(r.name)] = json.dumps(
            r.metrics_json(), indent=2, ensure_ascii=False).encode()
        files[layout.samples_key(r.name)] = "".join(
            json.dumps(s, ensure_ascii=False) + "\n" for s in r.samples).encode()
    return files


def zip_bundle(files: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name in sorted(files):
            archive.writestr(name, files[name])
    return out.getvalue()
