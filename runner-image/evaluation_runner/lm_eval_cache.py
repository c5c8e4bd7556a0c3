"""framework: lm-eval resumes mid-benchmark from a snapshot of lm-eval's own request cache.

`simple_evaluate(use_cache=...)` wraps the model in lm-eval's `CachingLM`: a SQLite file
(SqliteDict, table `unnamed`) keyed by a hash of the request type and arguments. lm-eval's
API models add each answer as it arrives, so the file grows while the benchmark runs, and a
later run with the same file sends only the requests that have no answer in it. Per benchmark
the runner

- downloads `checkpoints/<benchmark>/lm-eval-cache-<sha16>-<key16>.sqlite` when an earlier
  attempt saved one (`<key16>`: the builtin checkpoints' benchmark identity plus lm-eval's
  version, so another model, dataset or generation parameter matches nothing: lm-eval's own
  hash holds neither the model nor our seed);
- uploads a consistent copy (SQLite's online backup API, never the bytes of a file being
  written) at every checkpoint flush (the progress interval), when lm-eval fails, and when
  SIGTERM stops the attempt.

lm-eval never takes a request with `do_sample: true` from its cache; the runner sends
`do_sample: false` (with the configured temperature), so every request is resumable.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import threading
from pathlib import Path
from typing import Any

from evaluation_runner import layout
from evaluation_runner.checkpoints import BenchmarkCheckpoint, digest
from evaluation_runner.storage import ResultsWriter, error_code, read_key

log = logging.getLogger("evaluation_runner.lm_eval_cache")
SNAPSHOT_VERSION = 1
TABLE = "unnamed"  # SqliteDict's default table, the one CachingLM writes
_MISSING = ("NoSuchKey", "404")


def snapshot_key(checkpoint: BenchmarkCheckpoint, lm_eval_version: str | None) -> str:
    identity = digest({"v": SNAPSHOT_VERSION, "benchmark": checkpoint.base,
                       "lmEval": lm_eval_version})
    return (f"{layout.CHECKPOINTS_DIR}/{checkpoint.name}/"
            f"lm-eval-cache-{checkpoint.sha16}-{identity[:16]}.sqlite")


def cached_answers(path: Path) -> int:
    """How many answers a cache file holds (0 when it has no table yet)."""
    with contextlib.closing(sqlite3.connect(path, timeout=10)) as db:
        found = db.execute("SELECT name FROM sqlite_master WHERE type = 'table' AND name = ?",
                           (TABLE,)).fetchone()
        return int(db.execute(f'SELECT count(*) FROM "{TABLE}"').fetchone()[0]) if found else 0


def consistent_copy(path: Path) -> bytes:
    """The database as of one committed transaction, while another connection may write."""
    with contextlib.closing(sqlite3.connect(path, timeout=10)) as source, \
            contextlib.closing(sqlite3.connect(":memory:")) as copy:
        source.backup(copy)  # all pages in one step, under one read transaction
        return copy.serialize()


def _signature(path: Path) -> tuple[int, int]:
    # SqliteDict writes with REPLACE (a new rowid each time): any write moves max(rowid).
    with contextlib.closing(sqlite3.connect(path, timeout=10)) as db:
        if db.execute("SELECT 1 FROM sqlite_master WHERE name = ?", (TABLE,)).fetchone() is None:
            return (0, 0)
        row = db.execute(f'SELECT count(*), coalesce(max(rowid), 0) FROM "{TABLE}"').fetchone()
        return int(row[0]), int(row[1])


class CacheSnapshot:
    """One benchmark's lm-eval cache file: restored before lm-eval starts, saved while it runs.

    `save` runs on the progress thread, on the SIGTERM thread and on the main thread, so it
    is serialised; it uploads only when the cache changed since the last upload."""

    def __init__(self, writer: ResultsWriter, key: str, path: Path) -> None:
        self.writer = writer
        self.key = key
        self.path = path
        self.dbdict: Any = None  # lm-eval's SqliteDict, once CachingLM opened it
        self._lock = threading.Lock()
        self._saved: tuple[int, int] | None = None

    def restore(self) -> int:
        """Put an earlier attempt's snapshot where lm-eval will open its cache; the number of
        answers it holds (0: none saved, or unusable and discarded)."""
        try:
            body = read_key(self.writer, self.key)
        except Exception as error:
            if error_code(error) not in _MISSING:
                log.warning("lm-eval cache snapshot %s unreadable, starting afresh: %s",
                            self.key, error)
            return 0
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_bytes(body)
        try:
            with contextlib.closing(sqlite3.connect(self.path)) as db:
                if db.execute("PRAGMA quick_check").fetchone()[0] != "ok":
                    raise sqlite3.DatabaseError("quick_check failed")
            answers = cached_answers(self.path)
        except sqlite3.Error as error:
            log.warning("lm-eval cache snapshot %s is not a usable database, starting "
                        "afresh: %s", self.key, error)
            self.path.unlink()
            return 0
        self._saved = _signature(self.path)
        return answers

    def save(self) -> None:
        with self._lock:
            if not self.path.exists():
                return  # lm-eval has not opened its cache yet
            if self.dbdict is not None:
                # Queued writes first: the SqliteDict thread commits them in order.
                self.dbdict.commit(blocking=True)
            signature = _signature(self.path)
            if signature == self._saved:
                return
            self.writer.put(self.key, consistent_copy(self.path), "application/vnd.sqlite3")
            self._saved = signature
            log.info("lm-eval cache snapshot saved: %d answers", signature[0])

    def close(self) -> None:
        """Stop lm-eval's SqliteDict thread (lm-eval never closes it)."""
        with self._lock:
            if self.dbdict is not None:
                with contextlib.suppress(Exception):
                    self.dbdict.close()
                self.dbdict = None
