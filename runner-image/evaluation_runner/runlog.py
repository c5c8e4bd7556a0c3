"""The runner's own log, kept in memory (size-capped) and uploaded as `runner.log`.

A finished Job's pod, and its log, may be gone by the time anyone looks (a TTL on finished
Jobs); the copy in the results bundle stays until the task is deleted. The first part of the
log (configuration, datasets) and its last part (what happened at the end) are the useful
ones, so when the cap is reached the middle is dropped and a line says how much.
"""

from __future__ import annotations

import collections
import logging
import threading

DEFAULT_LIMIT = 1024 * 1024  # bytes
FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class CappedLog(logging.Handler):
    def __init__(self, limit: int = DEFAULT_LIMIT) -> None:
        super().__init__()
        self.head_limit = limit // 4
        self.tail_limit = limit - self.head_limit
        self.head: list[bytes] = []
        self.head_size = 0
        self.tail: collections.deque[bytes] = collections.deque()
        self.tail_size = 0
        self.dropped = 0
        self._buffer_lock = threading.Lock()
        self.setFormatter(logging.Formatter(FORMAT))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = (self.format(record) + "\n").encode(errors="replace")
        except Exception:
            self.handleError(record)
            return
        line = line[:self.tail_limit]
        with self._buffer_lock:
            if not self.tail and self.head_size + len(line) <= self.head_limit:
                self.head.append(line)
                self.head_size += len(line)
                return
            self.tail.append(line)
            self.tail_size += len(line)
            while self.tail_size > self.tail_limit:
                old = self.tail.popleft()
                self.tail_size -= len(old)
                self.dropped += len(old)

    def contents(self) -> bytes:
        with self._buffer_lock:
            marker = (f"[... {self.dropped} bytes of log dropped to stay under the size cap "
                      "...]\n".encode() if self.dropped else b"")
            return b"".join(self.head) + marker + b"".join(self.tail)


def install(limit: int = DEFAULT_LIMIT) -> CappedLog:
    """Capture the root logger (the runner's and its libraries' records) from now on."""
    handler = CappedLog(limit)
    handler.setLevel(logging.INFO)
    logging.getLogger().addHandler(handler)
    return handler
