"""What the runner reports back, parsed as untrusted input.

Users choose the runner image (`spec.framework.image`), so the termination message,
`summary.json` and `progress.json` may hold anything. Every byte of them goes through here:
size caps (checked before parsing), a nesting cap (so the JSON parser never recurses deeply),
finite numbers only, checked types, scores in the ranges of docs/runner-contract.md, and
`samplesDone <= samplesTotal`. What comes out is typed and safe to put into status; anything
else raises `InvalidRunnerOutput`, whose message names the document, the field and the value.
"""

from __future__ import annotations

import datetime
import enum
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from evaluation_operator.spec import METRICS

# Caps, in bytes, checked before anything is parsed. The kubelet keeps at most 4 KiB of a
# termination message; summary.json of 32 benchmarks is a few tens of KiB.
MAX_TERMINATION_MESSAGE_BYTES = 4096
MAX_SUMMARY_BYTES = 1024 * 1024
MAX_PROGRESS_BYTES = 64 * 1024
# The contract's documents nest four levels deep; this leaves room and keeps the parser far
# from Python's recursion limit.
MAX_DEPTH = 32
MAX_BENCHMARKS = 32  # the CRD's spec.benchmarks maxItems
MAX_NAME_LENGTH = 63  # the CRD's spec.benchmarks[].name maxLength
MAX_RUNNER_MESSAGE = 1024
MAX_BENCHMARK_ERROR = 512  # a benchmark's error, cut to this in status
MAX_TIME_LENGTH = 40  # an RFC 3339 time, with room for fractions and an offset
MAX_INT_DIGITS = 18  # keeps int() far from Python's 4,300-digit limit
MAX_COUNT = 10**15  # sample counts; well inside the int64 of the CRD's integer fields
# Reported on sacrebleu's 0-100 scale; every other metric is 0-1 (runner contract, section 2).
PERCENT_METRICS = ("bleu", "chrf")
_QUOTE_LENGTH = 80


class Source(enum.StrEnum):
    TERMINATION_MESSAGE = "termination message"
    SUMMARY = "summary.json"
    PROGRESS = "progress.json"


class RunnerReason(enum.StrEnum):
    """The failure reasons a runner may report (runner contract, section 3)."""

    CONFIGURATION_ERROR = "ConfigurationError"
    MODEL_UNREACHABLE = "ModelUnreachable"
    DATASET_UNREACHABLE = "DatasetUnreachable"
    UPLOAD_FAILED = "UploadFailed"
    RUNNER_ERROR = "RunnerError"


_REASONS = frozenset(r.value for r in RunnerReason)


class BenchmarkState(enum.StrEnum):
    """A benchmark's state in progress.json, summary.json and status.benchmarks[].state
    (runner contract, section 2)."""

    PENDING = "Pending"
    RUNNING = "Running"
    COMPLETED = "Completed"
    FAILED = "Failed"


class RunnerStatus(enum.StrEnum):
    """The termination message's `status` (runner contract, section 3)."""

    SUCCEEDED = "Succeeded"
    PARTIALLY_FAILED = "PartiallyFailed"  # bundle uploaded, some benchmarks failed
    FAILED = "Failed"


class InvalidRunnerOutput(ValueError):
    """The runner's output breaks the contract; the message says where and how."""

    def __init__(self, source: Source, path: str, problem: str) -> None:
        self.source = source
        self.path = path
        self.problem = problem
        where = f"{source}: {path}" if path else str(source)
        super().__init__(f"{where}: {problem}")


def quote(value: Any) -> str:
    """A short, printable, ASCII-only rendering of a value for an error message."""
    if isinstance(value, dict):
        return f"an object with {len(value)} key(s)"
    if isinstance(value, list):
        return f"a list of {len(value)} item(s)"
    if isinstance(value, str):
        text = json.dumps(value[:_QUOTE_LENGTH])  # ASCII: escapes keep surrogates printable
        return text if len(value) <= _QUOTE_LENGTH else text[:-1] + '..."'
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    return json.dumps(value) if value is None or isinstance(value, bool) else repr(value)


# --- typed values ------------------------------------------------------------------------------


@dataclass(frozen=True)
class BenchmarkScore:
    """One benchmark of a finished run. A failed one (failurePolicy: Continue) has no score,
    its `error` says why."""

    name: str
    score: float | None
    primary_metric: str | None = None
    metrics: Mapping[str, float] | None = None
    samples: int | None = None
    state: BenchmarkState = BenchmarkState.COMPLETED
    error: str | None = None
    started_at: str | None = None
    finished_at: str | None = None

    @property
    def failed(self) -> bool:
        return self.state is BenchmarkState.FAILED

    def status_entry(self) -> dict[str, Any]:
        entry: dict[str, Any] = {"name": self.name, "state": self.state.value}
        if self.score is not None:
            entry["score"] = self.score
        if self.primary_metric is not None:
            entry["primaryMetric"] = self.primary_metric
        if self.metrics is not None:
            entry["metrics"] = dict(self.metrics)
        if self.samples is not None:
            entry["samples"] = self.samples
            entry["samplesDone"] = entry["samplesTotal"] = self.samples
        for key, value in (("startedAt", self.started_at), ("finishedAt", self.finished_at),
                           ("error", self.error)):
            if value is not None:
                entry[key] = value
        return entry


@dataclass(frozen=True)
class Scores:
    overall: float
    benchmarks: tuple[BenchmarkScore, ...]

    @property
    def failed(self) -> tuple[BenchmarkScore, ...]:
        return tuple(b for b in self.benchmarks if b.failed)

    @property
    def partial(self) -> bool:
        """Some benchmarks failed: `overall` is over the others only."""
        return bool(self.failed)

    def status_fields(self) -> dict[str, Any]:
        """`overallScore`, `overallScorePartial` (when partial) and `benchmarks` of the
        task's status."""
        return {"overallScore": self.overall,
                **({"overallScorePartial": True} if self.partial else {}),
                "benchmarks": [b.status_entry() for b in self.benchmarks]}


@dataclass(frozen=True)
class RunnerSucceeded:
    """A success message (or a partial one: bundle uploaded, some benchmarks failed).
    `scores` is None when the runner truncated it to fit 4 KiB: the figures are then in
    summary.json."""

    scores: Scores | None
    truncated: bool = False
    partial: bool = False


@dataclass(frozen=True)
class RunnerFailed:
    reason: RunnerReason | None  # None: a reason this operator does not know
    message: str


TerminationMessage = RunnerSucceeded | RunnerFailed


@dataclass(frozen=True)
class BenchmarkProgress:
    name: str
    done: int
    total: int
    state: BenchmarkState | None = None  # None: a runner that reports no states
    started_at: str | None = None
    finished_at: str | None = None
    error: str | None = None

    def status_entry(self) -> dict[str, Any]:
        entry: dict[str, Any] = {"name": self.name, "samplesDone": self.done,
                                 "samplesTotal": self.total}
        for key, value in (("state", self.state.value if self.state else None),
                           ("startedAt", self.started_at), ("finishedAt", self.finished_at),
                           ("error", self.error)):
            if value is not None:
                entry[key] = value
        return entry


@dataclass(frozen=True)
class Progress:
    done: int
    total: int
    benchmarks: tuple[BenchmarkProgress, ...] = ()

    def status_field(self) -> dict[str, Any]:
        return {"samplesDone": self.done, "samplesTotal": self.total,
                "text": f"{self.done}/{self.total}"}

    @property
    def current(self) -> str | None:
        """The benchmark running now (the first, should a runner report several)."""
        return next((b.name for b in self.benchmarks if b.state is BenchmarkState.RUNNING),
                    None)


# --- bytes to JSON, within the caps ---------------------------------------------------------

_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
_NOT_BRACKET = bytes(b for b in range(256) if b not in b"[]{}")


def _check_depth(data: bytes, source: Source) -> None:
    """Refuse nesting deeper than MAX_DEPTH without parsing (strings cannot nest)."""
    brackets = _STRING.sub(b"", data).translate(None, delete=_NOT_BRACKET)
    depth = 0
    for byte in brackets:
        if byte in b"[{":
            depth += 1
            if depth > MAX_DEPTH:
                raise InvalidRunnerOutput(source, "", f"nested more than {MAX_DEPTH} levels deep")
        else:
            depth -= 1


def load_json(data: bytes | str, source: Source, limit: int) -> Any:
    """Parse one JSON document of at most `limit` bytes: finite numbers, bounded integers,
    bounded nesting, strict UTF-8."""
    if isinstance(data, str):
        if len(data) > limit:  # a character is at least one byte
            raise InvalidRunnerOutput(source, "", f"{len(data)} characters, more than the "
                                                  f"limit of {limit} bytes")
        try:
            data = data.encode()
        except UnicodeEncodeError as error:
            raise InvalidRunnerOutput(source, "", f"not valid UTF-8 text ({error.reason})"
                                      ) from None
    if len(data) > limit:
        raise InvalidRunnerOutput(source, "", f"{len(data)} bytes, more than the limit of "
                                              f"{limit} bytes")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise InvalidRunnerOutput(source, "", f"not valid UTF-8 (byte {error.start})") from None
    _check_depth(data, source)

    # NaN, Infinity and overflowing floats parse to non-finite floats here, so that the
    # field check that meets them can name the field (parts nobody reads are never used).
    def integer(text: str) -> int:
        if len(text.lstrip("-")) > MAX_INT_DIGITS:
            raise InvalidRunnerOutput(source, "", f"integer with {len(text)} digits is too large")
        return int(text)

    try:
        return json.loads(text, parse_constant=float, parse_int=integer)
    except InvalidRunnerOutput:
        raise
    except RecursionError:  # cannot happen after _check_depth; never let it escape
        raise InvalidRunnerOutput(source, "", "nested too deeply") from None
    except ValueError as error:
        detail = getattr(error, "msg", None) or str(error)
        raise InvalidRunnerOutput(source, "", f"not JSON ({detail[:200]})") from None


# --- field checks -------------------------------------------------------------------------


class _Fields:
    """Typed access to one JSON object, errors naming the field."""

    def __init__(self, value: Any, source: Source, path: str) -> None:
        if not isinstance(value, dict):
            raise InvalidRunnerOutput(source, path or "(document)",
                                      f"expected an object, got {quote(value)}")
        self.value: dict[str, Any] = value
        self.source = source
        self.path = path

    def where(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def fail(self, key: str, problem: str) -> InvalidRunnerOutput:
        return InvalidRunnerOutput(self.source, self.where(key), problem)

    def has(self, key: str) -> bool:
        return self.value.get(key) is not None

    def number(self, key: str, low: float, high: float) -> float:
        value = self.value.get(key)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.fail(key, f"expected a number, got {quote(value)}")
        if not math.isfinite(value):
            raise self.fail(key, f"{quote(value)} is not a finite number")
        if not low <= value <= high:
            raise self.fail(key, f"{quote(value)} is outside {low:g}-{high:g}")
        return float(value)

    def count(self, key: str) -> int:
        value = self.value.get(key)
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.fail(key, f"expected a whole number, got {quote(value)}")
        if not 0 <= value <= MAX_COUNT:
            raise self.fail(key, f"{quote(value)} is outside 0-{MAX_COUNT}")
        return value

    def string(self, key: str, max_length: int, choices: tuple[str, ...] = ()) -> str:
        value = self.value.get(key)
        if not isinstance(value, str) or not value:
            raise self.fail(key, f"expected a non-empty string, got {quote(value)}")
        if len(value) > max_length:
            raise self.fail(key, f"{quote(value)} is longer than {max_length} characters")
        if choices and value not in choices:
            raise self.fail(key, f"{quote(value)} is not one of {', '.join(choices)}")
        _check_text(value, self.source, self.where(key))
        return value

    def text(self, key: str, max_length: int) -> str:
        """A free text (an error), cut to `max_length`."""
        value = self.value.get(key)
        if not isinstance(value, str):
            raise self.fail(key, f"expected a string, got {quote(value)}")
        value = value[:max_length]
        _check_text(value, self.source, self.where(key))
        return value

    def time(self, key: str) -> str:
        """An RFC 3339 time with its offset, as status writes them (UTC, seconds, Z)."""
        value = self.string(key, MAX_TIME_LENGTH)
        try:
            moment = datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise self.fail(key, f"{quote(value)} is not an RFC 3339 time") from None
        if moment.tzinfo is None:
            raise self.fail(key, f"{quote(value)} has no UTC offset")
        return moment.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")

    def state(self, key: str) -> BenchmarkState:
        return BenchmarkState(self.string(key, 16, tuple(s.value for s in BenchmarkState)))

    def optional_times(self) -> tuple[str | None, str | None]:
        return (self.time("startedAt") if self.has("startedAt") else None,
                self.time("finishedAt") if self.has("finishedAt") else None)

    def items(self, key: str, max_items: int) -> list[Any]:
        value = self.value.get(key)
        if not isinstance(value, list):
            raise self.fail(key, f"expected a list, got {quote(value)}")
        if len(value) > max_items:
            raise self.fail(key, f"{len(value)} items, more than {max_items}")
        return value

    def mapping(self, key: str) -> dict[str, Any]:
        value = self.value.get(key)
        if not isinstance(value, dict):
            raise self.fail(key, f"expected an object, got {quote(value)}")
        return value


def _check_text(value: str, source: Source, path: str) -> None:
    try:
        value.encode()
    except UnicodeEncodeError:
        raise InvalidRunnerOutput(source, path, f"{quote(value)} is not valid UTF-8 text"
                                  ) from None


def metric_range(metric: str) -> float:
    return 100.0 if metric in PERCENT_METRICS else 1.0


def _benchmark(value: Any, source: Source, path: str, with_metrics: bool) -> BenchmarkScore:
    fields = _Fields(value, source, path)
    name = fields.string("name", MAX_NAME_LENGTH)
    state = fields.state("state") if fields.has("state") else BenchmarkState.COMPLETED
    started, finished = fields.optional_times()
    if state is BenchmarkState.FAILED:
        error = fields.text("error", MAX_BENCHMARK_ERROR) if fields.has("error") else None
        return BenchmarkScore(name=name, score=None, state=state,
                              error=error or "failed (the runner gave no reason)",
                              started_at=started, finished_at=finished)
    if state is not BenchmarkState.COMPLETED:
        raise fields.fail("state", f"{quote(state.value)} in a finished run: expected "
                                   "Completed or Failed")
    score = fields.number("score", 0.0, 1.0)
    primary = fields.string("primaryMetric", 32, METRICS) if fields.has("primaryMetric") \
        else None
    samples = fields.count("samples") if fields.has("samples") else None
    metrics: dict[str, float] | None = None
    if with_metrics and fields.has("metrics"):
        raw = _Fields(fields.mapping("metrics"), source, fields.where("metrics"))
        metrics = {}
        for metric in raw.value:
            if metric not in METRICS:
                raise raw.fail(metric, f"{quote(metric)} is not a metric of the runner "
                                       f"contract ({', '.join(METRICS)})")
            metrics[metric] = raw.number(metric, 0.0, metric_range(metric))
    return BenchmarkScore(name=name, score=score, primary_metric=primary, metrics=metrics,
                          samples=samples, started_at=started, finished_at=finished)


def _scores(fields: _Fields, with_metrics: bool = True) -> Scores:
    overall = fields.number("overallScore", 0.0, 1.0)
    raw = fields.items("benchmarks", MAX_BENCHMARKS)
    if not raw:
        raise fields.fail("benchmarks", "is empty: a run scores at least one benchmark")
    benchmarks = tuple(_benchmark(b, fields.source, f"{fields.where('benchmarks')}[{i}]",
                                  with_metrics) for i, b in enumerate(raw))
    scores = Scores(overall=overall, benchmarks=benchmarks)
    if len(scores.failed) == len(benchmarks):
        raise fields.fail("benchmarks", "every benchmark failed: such a run must report "
                                        "failure, not scores")
    _check_partial(fields, scores.partial)
    return scores


def _check_partial(fields: _Fields, partial: bool) -> None:
    """`partial: true` exactly when a benchmark failed (absent reads as false)."""
    flag = fields.value.get("partial", False)
    if not isinstance(flag, bool):
        raise fields.fail("partial", f"expected true or false, got {quote(flag)}")
    if flag != partial:
        raise fields.fail("partial", f"is {quote(flag)}, but "
                                     f"{'a' if partial else 'no'} benchmark failed")


# --- the three documents ------------------------------------------------------------------


def parse_termination_message(text: str | bytes | None) -> TerminationMessage | None:
    """The runner's compact summary; None when it wrote none. Raises InvalidRunnerOutput."""
    if text is None or not text.strip():
        return None
    source = Source.TERMINATION_MESSAGE
    fields = _Fields(load_json(text, source, MAX_TERMINATION_MESSAGE_BYTES), source, "")
    version = fields.value.get("v")
    if isinstance(version, bool) or version != 1:
        raise fields.fail("v", f"expected 1 (the runner contract's version), got "
                               f"{quote(version)}")
    status = RunnerStatus(fields.string("status", 16, tuple(s.value for s in RunnerStatus)))
    if status is RunnerStatus.FAILED:
        raw_reason = fields.value.get("reason")
        known = isinstance(raw_reason, str) and raw_reason in _REASONS
        message = fields.value.get("message")
        if message is not None and not isinstance(message, str):
            raise fields.fail("message", f"expected a string, got {quote(message)}")
        shown = (message or "")[:MAX_RUNNER_MESSAGE]
        _check_text(shown, source, "message")
        return RunnerFailed(reason=RunnerReason(str(raw_reason)) if known else None,
                            message=shown)
    truncated = fields.value.get("truncated", False)
    if not isinstance(truncated, bool):
        raise fields.fail("truncated", f"expected true or false, got {quote(truncated)}")
    partial = status is RunnerStatus.PARTIALLY_FAILED
    if truncated:
        # Figures the runner kept are checked all the same; summary.json has the full set.
        if fields.has("overallScore"):
            fields.number("overallScore", 0.0, 1.0)
        if fields.has("benchmarks"):
            _benchmarks_only(fields)
        return RunnerSucceeded(scores=None, truncated=True, partial=partial)
    scores = _scores(fields)
    if scores.partial != partial:
        raise fields.fail("status", f"{quote(status.value)}, but {'a' if scores.partial else 'no'}"
                                    " benchmark failed")
    return RunnerSucceeded(scores=scores, partial=partial)


def _benchmarks_only(fields: _Fields) -> None:
    """A truncated message may keep some benchmarks: each is checked like the full ones."""
    for i, b in enumerate(fields.items("benchmarks", MAX_BENCHMARKS)):
        _benchmark(b, fields.source, f"benchmarks[{i}]", with_metrics=False)


def failure_report(text: str | None) -> RunnerFailed | None:
    """A failed runner's own account, for the status message; None when there is no usable
    one (the exit code then speaks for it). Never raises."""
    try:
        message = parse_termination_message(text)
    except InvalidRunnerOutput:
        return None
    return message if isinstance(message, RunnerFailed) else None


def parse_summary(data: bytes | str) -> Scores:
    """The scores in summary.json. Raises InvalidRunnerOutput."""
    source = Source.SUMMARY
    return _scores(_Fields(load_json(data, source, MAX_SUMMARY_BYTES), source, ""))


def parse_progress(data: bytes | str) -> Progress:
    """progress.json. Raises InvalidRunnerOutput."""
    source = Source.PROGRESS
    fields = _Fields(load_json(data, source, MAX_PROGRESS_BYTES), source, "")
    done, total = _done_of_total(fields)
    benchmarks: list[BenchmarkProgress] = []
    if fields.has("benchmarks"):
        raw = _Fields(fields.mapping("benchmarks"), source, "benchmarks")
        if len(raw.value) > MAX_BENCHMARKS:
            raise fields.fail("benchmarks", f"{len(raw.value)} entries, more than "
                                            f"{MAX_BENCHMARKS}")
        for name, entry in raw.value.items():
            if not name or len(name) > MAX_NAME_LENGTH:
                raise raw.fail(name[:MAX_NAME_LENGTH], "is not a benchmark name")
            _check_text(name, source, raw.where(name[:MAX_NAME_LENGTH]))
            benchmarks.append(_benchmark_progress(name, _Fields(entry, source, raw.where(name))))
    return Progress(done=done, total=total, benchmarks=tuple(benchmarks))


def _benchmark_progress(name: str, fields: _Fields) -> BenchmarkProgress:
    done, total = _done_of_total(fields)
    state = fields.state("state") if fields.has("state") else None
    started, finished = fields.optional_times()
    error = fields.text("error", MAX_BENCHMARK_ERROR) if fields.has("error") else None
    return BenchmarkProgress(name=name, done=done, total=total, state=state,
                             started_at=started, finished_at=finished, error=error)


def _done_of_total(fields: _Fields) -> tuple[int, int]:
    done, total = fields.count("samplesDone"), fields.count("samplesTotal")
    if done > total:
        raise fields.fail("samplesDone", f"{done} is more than samplesTotal ({total})")
    return done, total
