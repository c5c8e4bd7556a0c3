"""The read model both faces show: typed values parsed from the task and its bundle.

Pure functions only: `task_row` and `task_details` read an EvaluationTask object (and,
when S3 is readable, its summary.json); `to_plain` turns any of these values into the
JSON/YAML document `-o json|yaml` prints and the web console's API serves.
"""

from __future__ import annotations

import dataclasses
import datetime
import enum
import math
from dataclasses import dataclass, field
from typing import Any

from evaluation_runner.metrics import as_score


class Phase(enum.StrEnum):
    EVALUATING = "Evaluating"
    COMPLETED = "Completed"
    FAILED = "Failed"
    PENDING = "Pending"  # no status yet: the operator has not seen the task

    @classmethod
    def parse(cls, value: Any) -> Phase:
        try:
            return cls(str(value))
        except ValueError:
            return cls.PENDING


# Failed tasks whose bundle was uploaded: some benchmarks failed, the others' results are in
# it (failurePolicy: Continue). tests/contract/test_shared_lists.py ties it to the operator.
BUNDLE_REASONS = ("PartiallyFailed",)


@dataclass(frozen=True)
class Progress:
    done: int
    total: int

    @property
    def fraction(self) -> float | None:
        return self.done / self.total if self.total > 0 else None

    @property
    def text(self) -> str:
        return f"{self.done}/{self.total}" if self.total else ""


@dataclass(frozen=True)
class TaskRow:
    namespace: str
    name: str
    uid: str
    phase: Phase
    overall: float | None
    model: str
    progress: Progress
    created: str
    reason: str
    message: str
    results_uri: str | None
    deleting: bool

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def has_bundle(self) -> bool:
        """The runner uploaded results.zip and summary.json: a Completed task, or a Failed
        one whose reason says it did (the operator's Reason values; docs/operator.md)."""
        return self.phase is Phase.COMPLETED or (
            self.phase is Phase.FAILED and self.reason in BUNDLE_REASONS)


def metric_scale(name: str) -> float:
    """From the runner's own score conversion, so the two never disagree."""
    try:
        return 1.0 / as_score(name, 1.0)
    except (KeyError, ZeroDivisionError):
        return 1.0  # a metric this runner version does not know: taken as 0-1


@dataclass(frozen=True)
class MetricRow:
    name: str
    value: float
    stderr: float | None
    primary: bool

    @property
    def scale(self) -> float:
        """The metric's full scale (100 for BLEU and chrF), as the runner reports it."""
        return metric_scale(self.name)


@dataclass(frozen=True)
class BenchmarkRow:
    name: str
    task: str
    score: float | None
    primary_metric: str
    metrics: list[MetricRow]
    samples: int | None
    weight: float | None
    error: str = ""  # why it failed (failurePolicy: Continue), "" when it did not

    @property
    def primary_stderr(self) -> float | None:
        """The stderr of the score, on the score's 0-1 scale."""
        for metric in self.metrics:
            if metric.primary and metric.stderr is not None:
                return metric.stderr / metric.scale
        return None


@dataclass(frozen=True)
class DatasetRow:
    benchmark: str
    uri: str
    sha256: str
    rows: int | None
    samples: int | None


@dataclass(frozen=True)
class TaskDetails:
    row: TaskRow
    benchmarks: list[BenchmarkRow]
    datasets: list[DatasetRow]
    framework: dict[str, Any]
    model: dict[str, Any]
    parameters: dict[str, Any]
    timings: dict[str, Any]
    bundle_uri: str | None
    start_time: str | None
    completion_time: str | None
    conditions: list[dict[str, Any]] = field(default_factory=list)
    summary_source: str = "status"  # "summary.json" when the bundle was read
    results_note: str = ""  # why the bundle's details are missing, when they are


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def _int(value: Any) -> int | None:
    return int(value) if isinstance(value, int) and not isinstance(value, bool) else None


def _dict(value: Any) -> dict[str, Any]:
    return dict(value) if isinstance(value, dict) else {}


def _list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, list) else []


def task_row(task: dict[str, Any]) -> TaskRow:
    meta, spec, status = _dict(task.get("metadata")), _dict(task.get("spec")), _dict(
        task.get("status"))
    progress = _dict(status.get("progress"))
    return TaskRow(
        namespace=str(meta.get("namespace") or ""), name=str(meta.get("name") or ""),
        uid=str(meta.get("uid") or ""), phase=Phase.parse(status.get("phase")),
        overall=_number(status.get("overallScore")),
        model=str(_dict(spec.get("model")).get("name") or ""),
        progress=Progress(_int(progress.get("samplesDone")) or 0,
                          _int(progress.get("samplesTotal")) or 0),
        created=str(meta.get("creationTimestamp") or ""),
        reason=str(status.get("reason") or ""), message=str(status.get("message") or ""),
        results_uri=_dict(status.get("results")).get("uri") or None,
        deleting=bool(meta.get("deletionTimestamp")),
    )


def _metric_rows(metrics: dict[str, Any], stderr: dict[str, Any], primary: str
                 ) -> list[MetricRow]:
    rows = []
    for name, value in metrics.items():
        number = _number(value)
        if number is not None:
            rows.append(MetricRow(name, number, _number(stderr.get(name)), name == primary))
    return rows


def _failure(benchmark: dict[str, Any]) -> str:
    if benchmark.get("state") != "Failed":
        return ""
    return str(benchmark.get("error") or "failed")


def _benchmarks_from_status(status: dict[str, Any]) -> list[BenchmarkRow]:
    rows = []
    for item in _list(status.get("benchmarks")):
        b = _dict(item)
        primary = str(b.get("primaryMetric") or "")
        rows.append(BenchmarkRow(
            name=str(b.get("name") or ""), task="", score=_number(b.get("score")),
            primary_metric=primary, metrics=_metric_rows(_dict(b.get("metrics")), {}, primary),
            samples=_int(b.get("samples")), weight=None, error=_failure(b)))
    return rows


def _benchmarks_from_summary(summary: dict[str, Any]) -> list[BenchmarkRow]:
    rows = []
    for item in _list(summary.get("benchmarks")):
        b = _dict(item)
        primary = str(b.get("primaryMetric") or "")
        rows.append(BenchmarkRow(
            name=str(b.get("name") or ""), task=str(b.get("task") or ""),
            score=_number(b.get("score")), primary_metric=primary,
            metrics=_metric_rows(_dict(b.get("metrics")), _dict(b.get("stderr")), primary),
            samples=_int(b.get("samples")), weight=_number(b.get("weight")),
            error=_failure(b)))
    return rows


def _datasets(summary: dict[str, Any]) -> list[DatasetRow]:
    return [DatasetRow(benchmark=str(d.get("name") or ""), uri=str(d.get("uri") or ""),
                       sha256=str(d.get("sha256") or ""), rows=_int(d.get("rows")),
                       samples=_int(d.get("samples")))
            for d in map(_dict, _list(summary.get("datasets")))]


def task_details(task: dict[str, Any], summary: dict[str, Any] | None,
                 results_note: str = "") -> TaskDetails:
    """Details from status alone, or from summary.json when it could be read."""
    row = task_row(task)
    spec, status = _dict(task.get("spec")), _dict(task.get("status"))
    if summary is not None:
        benchmarks = _benchmarks_from_summary(summary)
        framework, model = _dict(summary.get("framework")), _dict(summary.get("model"))
        parameters, timings = _dict(summary.get("parameters")), _dict(summary.get("timings"))
        datasets = _datasets(summary)
        if row.overall is None:
            row = dataclasses.replace(row, overall=_number(summary.get("overallScore")))
    else:
        benchmarks = _benchmarks_from_status(status)
        framework = _dict(spec.get("framework"))
        model = {k: v for k, v in _dict(spec.get("model")).items() if k != "endpoint"}
        endpoint = _dict(_dict(spec.get("model")).get("endpoint"))
        if endpoint.get("url"):
            model["endpoint"] = endpoint["url"]
        parameters, timings = _dict(spec.get("parameters")), {}
        datasets = [DatasetRow(str(b.get("name") or ""),
                               str(_dict(b.get("dataset")).get("uri") or ""), "", None, None)
                    for b in map(_dict, _list(spec.get("benchmarks")))]
    return TaskDetails(
        row=row, benchmarks=benchmarks, datasets=datasets, framework=framework, model=model,
        parameters=parameters, timings=timings,
        bundle_uri=_dict(status.get("results")).get("bundle") or None,
        start_time=status.get("startTime"), completion_time=status.get("completionTime"),
        conditions=[_dict(c) for c in _list(status.get("conditions"))],
        summary_source="summary.json" if summary is not None else "status",
        results_note=results_note)


def age(created: str, now: datetime.datetime | None = None) -> str:
    """kubectl's short age: 45s, 12m, 3h, 2d."""
    try:
        then = datetime.datetime.fromisoformat(created.replace("Z", "+00:00"))
    except ValueError:
        return ""
    seconds = int(((now or datetime.datetime.now(datetime.UTC)) - then).total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size * (2 if unit != "m" else 1):
            return f"{seconds // size}{unit}"
    return f"{max(seconds, 0)}s"


def to_plain(value: Any) -> Any:
    """Dataclasses and enums as plain JSON-ready values (keys in camelCase)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        plain = {_camel(f.name): to_plain(getattr(value, f.name))
                 for f in dataclasses.fields(value)}
        for extra in ("key", "fraction", "text", "primary_stderr"):
            if hasattr(type(value), extra):
                plain[_camel(extra)] = to_plain(getattr(value, extra))
        return plain
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, dict):
        return {str(k): to_plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_plain(v) for v in value]
    return value


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)
