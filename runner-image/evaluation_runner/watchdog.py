"""Fails an attempt that hangs instead of letting it wait forever.

Two conditions, checked by a background thread: a model request older than the endpoint's
timeout plus a margin (a server that trickles bytes never trips the socket timeout), and no
sample finished for `stall_seconds` (a stuck local model, a deadlock). Hung threads cannot be
interrupted in Python, so the watchdog calls `on_fire` with the error, which reports it,
saves what can be saved and ends the process with the transient exit code.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import threading
import time
from collections.abc import Callable, Iterator

from evaluation_runner.errors import RunnerError, TransientError

log = logging.getLogger("evaluation_runner.watchdog")


class Watchdog:
    def __init__(self, request_limit_seconds: float | None, stall_seconds: float,
                 on_fire: Callable[[RunnerError], None], *, poll_seconds: float = 1.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.request_limit = request_limit_seconds
        self.stall_seconds = stall_seconds
        self.on_fire = on_fire
        self.poll_seconds = poll_seconds
        self.clock = clock
        self._lock = threading.Lock()
        self._in_flight: dict[int, tuple[str, float]] = {}
        self._ids = itertools.count()
        self._last_progress = clock()
        self._paused = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="watchdog", daemon=True)
        self.fired: RunnerError | None = None

    @contextlib.contextmanager
    def request(self, what: str) -> Iterator[None]:
        token = next(self._ids)
        with self._lock:
            self._in_flight[token] = (what, self.clock())
        try:
            yield
        finally:
            with self._lock:
                self._in_flight.pop(token, None)

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """No stall check meanwhile: for work that reports progress only when it ends (an
        lm-eval benchmark runs whole)."""
        with self._lock:
            self._paused += 1
        try:
            yield
        finally:
            with self._lock:
                self._paused -= 1
                self._last_progress = self.clock()

    def progress(self) -> None:
        with self._lock:
            self._last_progress = self.clock()

    def check(self) -> RunnerError | None:
        """The reason to give up now, if there is one."""
        now = self.clock()
        with self._lock:
            oldest = min(self._in_flight.values(), key=lambda item: item[1], default=None)
            idle = 0.0 if self._paused else now - self._last_progress
        if oldest is not None and self.request_limit is not None and \
                now - oldest[1] > self.request_limit:
            return TransientError(
                f"watchdog: a request to {oldest[0]} has not finished after "
                f"{now - oldest[1]:.0f} s (limit {self.request_limit:.0f} s: "
                "model.endpoint.timeoutSeconds plus the watchdog's margin); the endpoint "
                "hangs. The attempt ends so the Job can retry; answered samples are kept.",
                reason="ModelUnreachable")
        if idle > self.stall_seconds:
            return TransientError(
                f"watchdog: no sample finished for {idle:.0f} s (limit "
                f"{self.stall_seconds:.0f} s, watchdog.stallSeconds); the model or the runner "
                "is stuck. The attempt ends so the Job can retry; answered samples are kept.",
                reason="RunnerError")
        return None

    def _loop(self) -> None:
        while not self._stop.wait(self.poll_seconds):
            error = self.check()
            if error is not None:
                self.fired = error
                log.error("%s", error)
                self.on_fire(error)
                return

    def __enter__(self) -> Watchdog:
        self.progress()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


class NoWatchdog:
    """For clients used outside a run (tests, the benchmark scripts)."""

    @contextlib.contextmanager
    def request(self, what: str) -> Iterator[None]:
        yield
