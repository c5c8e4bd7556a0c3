"""progress.json, rewritten at most every few seconds while the run goes on."""

from __future__ import annotations

import datetime
import json
import threading
from collections.abc import Callable


class ProgressTracker:
    def __init__(self, totals: dict[str, int], publish: Callable[[bytes], None],
                 interval_seconds: float) -> None:
        self.totals = totals
        self.done = dict.fromkeys(totals, 0)
        self.publish = publish
        self.interval = interval_seconds
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def advance(self, benchmark: str) -> None:
        with self._lock:
            self.done[benchmark] += 1

    def document(self) -> bytes:
        with self._lock:
            done, totals = dict(self.done), dict(self.totals)
        return json.dumps({
            "samplesDone": sum(done.values()), "samplesTotal": sum(totals.values()),
            "updatedAt": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "benchmarks": {name: {"samplesDone": done[name], "samplesTotal": totals[name]}
                           for name in totals},
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
