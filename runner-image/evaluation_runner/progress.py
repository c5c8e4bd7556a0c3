"""progress.json, rewritten at most every few seconds while the run goes on."""

from __future__ import annotations

import datetime
import enum
import json
import threading
from collections.abc import Callable
from dataclasses import dataclass

MAX_ERROR_LENGTH = 512  # a benchmark's error in progress.json and summary.json


class BenchmarkState(enum.StrEnum):
    """A benchmark's state in progress.json and summary.json (runner contract, section 2)."""

    PENDING = "Pending"
    RUNNING = "Running"
    COMPLETED = "Completed"
    FAILED = "Failed"


def now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class BenchmarkProgress:
    total: int
    done: int = 0
    state: BenchmarkState = BenchmarkState.PENDING
    started_at: str | None = None
    finished_at: str | None = None
    error: str | None = None

    def document(self) -> dict[str, object]:
        entry: dict[str, object] = {"samplesDone": self.done, "samplesTotal": self.total,
                                    "state": self.state.value}
        for key, value in (("startedAt", self.started_at), ("finishedAt", self.finished_at),
                           ("error", self.error)):
            if value is not None:
                entry[key] = value
        return entry


class ProgressTracker:
    def __init__(self, totals: dict[str, int], publish: Callable[[bytes], None],
                 interval_seconds: float) -> None:
        self.benchmarks = {name: BenchmarkProgress(total) for name, total in totals.items()}
        self.publish = publish
        self.interval = interval_seconds
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def advance(self, benchmark: str) -> None:
        with self._lock:
            self.benchmarks[benchmark].done += 1

    def start(self, benchmark: str) -> None:
        with self._lock:
            entry = self.benchmarks[benchmark]
            entry.state, entry.started_at = BenchmarkState.RUNNING, now()

    def finish(self, benchmark: str) -> None:
        with self._lock:
            entry = self.benchmarks[benchmark]
            entry.state, entry.finished_at = BenchmarkState.COMPLETED, now()

    def completed_elsewhere(self, benchmark: str) -> None:
        """Every sample was answered by other pods (a sharded run's merge)."""
        with self._lock:
            entry = self.benchmarks[benchmark]
            entry.done, entry.state = entry.total, BenchmarkState.COMPLETED

    def fail(self, benchmark: str, error: str) -> None:
        with self._lock:
            entry = self.benchmarks[benchmark]
            entry.state, entry.finished_at = BenchmarkState.FAILED, now()
            entry.started_at = entry.started_at or entry.finished_at
            entry.error = error[:MAX_ERROR_LENGTH]

    def entry(self, benchmark: str) -> BenchmarkProgress:
        with self._lock:
            found = self.benchmarks[benchmark]
            return BenchmarkProgress(found.total, found.done, found.state, found.started_at,
                                     found.finished_at, found.error)

    def document(self) -> bytes:
        with self._lock:
            entries = {name: b.document() for name, b in self.benchmarks.items()}
            done = sum(b.done for b in self.benchmarks.values())
            total = sum(b.total for b in self.benchmarks.values())
        return json.dumps({
            "samplesDone": done, "samplesTotal": total,
            "updatedAt": now(),
            "benchmarks": entries,
        }).encode()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.publish(self.document())
            except Exception:  # progress is best effort; the final upload is not
                continue

    def __enter__(self) -> ProgressTracker:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
