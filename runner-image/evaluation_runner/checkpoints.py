"""Resume after preemption: answers and finished benchmarks checkpointed under the prefix.

Layout (below the task's prefix, so the operator's purge removes it with the rest):

    checkpoints/<benchmark>/<dataset-sha16>-answers-<attempt>-<seq>.jsonl
        one line per answered request: {"key", "prompt", "prediction", "choiceLogprobs"}
    checkpoints/<benchmark>/<dataset-sha16>-done.json
        the benchmark finished: {"key", "sha256", "samples", "native"}
    checkpoints/<benchmark>/lm-eval-cache-<dataset-sha16>-<key16>.sqlite
        framework lm-eval: a snapshot of lm-eval's request cache (lm_eval_cache.py); its
        name does not start with the dataset checksum, so `open` leaves it alone

A request's key is the SHA-256 of everything that decides the model's answer (model, API,
generation parameters, prompt, choices, few-shot examples, dataset checksum), so a retry of the
same task (new process, same uid, same prefix) reuses exactly the answers it would otherwise
ask for again, and a changed dataset matches nothing. Attempts write their own files, never
rewriting another attempt's.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from evaluation_runner import layout
from evaluation_runner.config import BenchmarkConfig, RunnerConfig
from evaluation_runner.datasets import LoadedDataset, Sample
from evaluation_runner.errors import TransientError
from evaluation_runner.storage import ResultsWriter, list_keys, read_key
from evaluation_runner.tasks import Generation, Prediction

log = logging.getLogger("evaluation_runner.checkpoints")
DIRECTORY = layout.CHECKPOINTS_DIR
KEY_VERSION = 1


def digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, ensure_ascii=False,
                                     separators=(",", ":")).encode()).hexdigest()


def model_identity(config: RunnerConfig) -> dict[str, Any]:
    return {"name": config.model_name,
            "endpoint": config.endpoint.url if config.endpoint else None,
            "api": config.endpoint.api if config.endpoint else None,
            "source": config.source_uri, "framework": config.framework}


def benchmark_key(config: RunnerConfig, benchmark: BenchmarkConfig, sha256: str,
                  generation: Generation) -> str:
    """What decides a benchmark's answers (not its metrics: re-scoring reuses answers)."""
    return digest({"v": KEY_VERSION, "model": model_identity(config), "sha256": sha256,
                   "task": benchmark.task, "fields": benchmark.dataset.fields,
                   "limit": benchmark.limit, "fewShot": benchmark.few_shot,
                   "labels": benchmark.labels, "generation": generation.__dict__})


def request_key(base: str, sample: Sample, examples: Sequence[Sample]) -> str:
    return digest({"base": base, "prompt": sample.prompt, "choices": sample.choices,
                   "examples": [(e.prompt, e.reference, e.choices) for e in examples]})


@dataclass
class BenchmarkCheckpoint:
    """The answer cache of one benchmark: `get` before asking the model, `put` after."""

    store: CheckpointStore
    name: str
    base: str
    sha16: str
    examples: tuple[Sample, ...]
    answers: dict[str, dict[str, Any]] = field(default_factory=dict)
    reused: int = 0
    requested: int = 0
    done: dict[str, Any] | None = None

    def get(self, sample: Sample) -> Prediction | None:
        if self.store.stopping.is_set():
            # The attempt is ending (the process exits within seconds): start nothing new.
            self.store.stopped.wait(timeout=120)
            raise TransientError("the attempt is ending: no new requests", reason="RunnerError")
        found = self.answers.get(request_key(self.base, sample, self.examples))
        if found is None:
            with self.store.lock:
                self.store.in_flight += 1
            return None
        with self.store.lock:
            self.reused += 1
        logprobs = found.get("choiceLogprobs")
        return Prediction(sample, str(found["prompt"]), str(found["prediction"]),
                          tuple(float(v) for v in logprobs) if logprobs is not None else None)

    def put(self, sample: Sample, prediction: Prediction, reused: bool = False) -> None:
        """`reused`: the answer came from an earlier attempt by another way (lm-eval's
        request cache), not from the model now."""
        record = {"key": request_key(self.base, sample, self.examples),
                  "prompt": prediction.prompt, "prediction": prediction.prediction,
                  "choiceLogprobs": (list(prediction.choice_logprobs)
                                     if prediction.choice_logprobs is not None else None)}
        with self.store.lock:
            if reused:
                self.reused += 1
            else:
                self.requested += 1
            self.store.in_flight = max(0, self.store.in_flight - 1)
            self.store.pending.setdefault(self.name, []).append((self.sha16, record))

    def finished(self, samples: int, native: dict[str, Any] | None = None) -> None:
        self.store.flush()
        self.store.writer.put(
            f"{DIRECTORY}/{self.name}/{self.sha16}-done.json",
            json.dumps({"key": self.base, "samples": samples, "native": native},
                       ensure_ascii=False).encode(), "application/json")

    def reusable_done(self) -> dict[str, Any] | None:
        """The finished marker of an earlier attempt, when it matches this request."""
        return self.done if self.done and self.done.get("key") == self.base else None

    def report(self) -> dict[str, Any]:
        return {"answersReused": self.reused, "answersRequested": self.requested,
                "benchmarkReused": self.requested == 0 and self.reused > 0}


class CheckpointStore:
    def __init__(self, writer: ResultsWriter, attempt: str | None = None) -> None:
        self.writer = writer
        self.attempt = attempt or f"{int(time.time())}-{os.getpid()}"
        self.lock = threading.Lock()
        self.pending: dict[str, list[tuple[str, dict[str, Any]]]] = {}
        self.sequence = 0
        self.benchmarks: dict[str, BenchmarkCheckpoint] = {}
        self.stopping = threading.Event()
        self.stopped = threading.Event()  # never set: what new requests wait on while stopping
        self.in_flight = 0  # requests asked for (get found nothing) and not yet answered
        # State kept outside the answer files (lm-eval's request cache), saved at every flush.
        self.savers: list[Callable[[], None]] = []

    @contextmanager
    def saving(self, saver: Callable[[], None]) -> Iterator[None]:
        """Call `saver` at every flush (the progress interval, SIGTERM) while in the block."""
        with self.lock:
            self.savers.append(saver)
        try:
            yield
        finally:
            with self.lock:
                self.savers.remove(saver)

    def stop(self, drain_seconds: float) -> None:
        """Start no more requests, give those under way `drain_seconds` to finish, save."""
        self.stopping.set()
        deadline = time.monotonic() + drain_seconds
        while time.monotonic() < deadline:
            with self.lock:
                if self.in_flight == 0:
                    break
            time.sleep(0.05)
        self.flush()

    def open(self, config: RunnerConfig, benchmark: BenchmarkConfig, dataset: LoadedDataset,
             generation: Generation) -> BenchmarkCheckpoint:
        """Load what earlier attempts saved for this benchmark and dataset version."""
        base = benchmark_key(config, benchmark, dataset.sha256, generation)
        checkpoint = BenchmarkCheckpoint(self, benchmark.name, base, dataset.sha256[:16],
                                         dataset.examples)
        try:
            keys = list_keys(self.writer, f"{DIRECTORY}/{benchmark.name}/")
        except Exception as error:  # no checkpoints readable: start afresh, say so
            log.warning("checkpoints of %s unreadable, starting afresh: %s", benchmark.name,
                        error)
            keys = []
        for key in keys:
            filename = key.rsplit("/", 1)[-1]
            if not filename.startswith(f"{checkpoint.sha16}-"):
                continue  # another version of the dataset
            try:
                body = read_key(self.writer, key)
                if filename.endswith("-done.json"):
                    checkpoint.done = json.loads(body)
                    continue
                for line in body.decode().splitlines():
                    record = json.loads(line)
                    checkpoint.answers[str(record["key"])] = record
            except Exception as error:
                log.warning("checkpoint %s unreadable, ignored: %s", key, error)
        if checkpoint.answers:
            log.info("benchmark %s: %d answers checkpointed by earlier attempts",
                     benchmark.name, len(checkpoint.answers))
        self.benchmarks[benchmark.name] = checkpoint
        return checkpoint

    def flush(self) -> None:
        """Write the answers gathered since the last flush, one new file per benchmark."""
        with self.lock:
            pending, self.pending = self.pending, {}
            self.sequence += 1
            sequence = self.sequence
            savers = list(self.savers)
        for name, records in pending.items():
            by_version: dict[str, list[dict[str, Any]]] = {}
            for sha16, record in records:
                by_version.setdefault(sha16, []).append(record)
            for sha16, batch in by_version.items():
                body = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in batch)
                self.writer.put(
                    f"{DIRECTORY}/{name}/{sha16}-answers-{self.attempt}-{sequence:05d}.jsonl",
                    body.encode(), "application/x-ndjson")
        for saver in savers:
            saver()

    def report(self) -> dict[str, Any]:
        reports = {name: c.report() for name, c in self.benchmarks.items()}
        return {"attempt": self.attempt,
                "answersReused": sum(r["answersReused"] for r in reports.values()),
                "benchmarks": reports}
