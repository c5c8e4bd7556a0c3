"""Sharded runs: the N pods of an Indexed Job share every benchmark's samples; a merge scores.

Pod `i` (JOB_COMPLETION_INDEX) answers a contiguous block of each benchmark's samples, given
by `plan`: a pure function of the sample counts and N, so a retried pod gets the same block
(and its own checkpoints under `shards/<i>/checkpoints/` give back what it answered before).
It writes its answers to `shards/<i>/benchmarks/<name>/predictions.jsonl` and, last,
`shards/<i>/shard.json`. The merge reads every shard back into dataset order and scores the
whole set with the same functions as a one-pod run, so corpus metrics (BLEU, chrF, F1 over
labels) and bootstrap standard errors are computed over all answers, never averaged.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from evaluation_runner import layout, termination
from evaluation_runner.config import RunnerConfig
from evaluation_runner.datasets import LoadedDataset
from evaluation_runner.errors import ConfigurationError, TransientError
from evaluation_runner.storage import ResultsWriter, read_key
from evaluation_runner.tasks import Prediction

INDEX_ENV = "JOB_COMPLETION_INDEX"  # set by the Job controller in an Indexed Job's pods
SHARD_VERSION = 1


def plan(counts: Sequence[int], shards: int) -> list[list[range]]:
    """plan[i][b]: the positions of benchmark b's samples that shard i answers.

    Contiguous blocks whose sizes differ by at most one within a benchmark; the shards that
    get the larger blocks rotate from one benchmark to the next, so every shard's total
    differs from any other's by at most one sample too.
    """
    if shards < 1:
        raise ValueError(f"shards: {shards} (at least 1)")
    result: list[list[range]] = [[] for _ in range(shards)]
    offset = 0  # the shard that gets the next extra sample
    for count in counts:
        base, extra = divmod(count, shards)
        start = 0
        for i in range(shards):
            size = base + (1 if (i - offset) % shards < extra else 0)
            result[i].append(range(start, start + size))
            start += size
        offset = (offset + extra) % shards
    return result


def shard_index(env: Mapping[str, str], count: int) -> int:
    """This pod's shard, from the Indexed Job's environment."""
    raw = env.get(INDEX_ENV)
    if raw is None or not raw.isdigit():
        raise ConfigurationError(
            f"sharding.count is {count} but {INDEX_ENV} is {raw!r}: a sharded run must be a "
            "pod of an Indexed Job (completionMode: Indexed)")
    index = int(raw)
    if index >= count:
        raise ConfigurationError(f"{INDEX_ENV}={index} is not below sharding.count={count}")
    return index


def shard_datasets(datasets: Sequence[LoadedDataset], shards: int, index: int
                   ) -> list[LoadedDataset]:
    """Each dataset with only the samples of shard `index` (examples stay whole)."""
    blocks = plan([len(d.samples) for d in datasets], shards)[index]
    return [dataclasses.replace(d, samples=d.samples[block.start:block.stop])
            for d, block in zip(datasets, blocks, strict=True)]


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def predictions_body(predictions: Sequence[Prediction]) -> bytes:
    return "".join(json.dumps({
        "index": p.sample.index, "prompt": p.prompt, "prediction": p.prediction,
        "choiceLogprobs": (list(p.choice_logprobs) if p.choice_logprobs is not None
                           else None)}, ensure_ascii=False) + "\n"
        for p in predictions).encode()


def publish_shard(writer: ResultsWriter, config: RunnerConfig, index: int,
                  datasets: Sequence[LoadedDataset], answers: Sequence[Sequence[Prediction]],
                  resumed: dict[str, Any], timings: dict[str, Any], progress: bytes) -> bytes:
    """Shard `index`'s answers, then shard.json (the marker the merge needs); `writer` is
    the shard's own (below shards/<i>/). Returns the termination message."""
    blocks = plan([len(d.samples) for d in datasets], config.shards)[index]
    for benchmark, predictions in zip(config.benchmarks, answers, strict=True):
        writer.put(layout.predictions_key(benchmark.name), predictions_body(predictions),
                   "application/x-ndjson")
    document = {
        "v": SHARD_VERSION, "index": index, "count": config.shards,
        "benchmarks": {b.name: {"sha256": d.sha256, "start": block.start, "stop": block.stop}
                       for b, d, block in zip(config.benchmarks, datasets, blocks, strict=True)},
        "resumed": resumed, "timings": timings,
    }
    writer.put(layout.PROGRESS_JSON, progress, "application/json")
    writer.put(layout.SHARD_JSON, json.dumps(document, ensure_ascii=False).encode(),
               "application/json")
    samples = sum(len(block) for block in blocks)
    return termination.encode({"v": 1, "status": "Succeeded",
                               "shard": {"index": index, "count": config.shards,
                                         "samples": samples},
                               "results": {"uri": writer.uri()}})


@dataclass(frozen=True)
class Gathered:
    """Every shard's answers in dataset order, and what the summary says about the shards."""

    answers: list[list[Prediction]]
    resumed: dict[str, Any]
    bookkeeping: dict[str, Any]
    started_at: str | None


def _read(writer: ResultsWriter, key: str) -> bytes:
    try:
        return read_key(writer, key)
    except Exception as error:
        raise TransientError(
            f"merge: {writer.uri(key)} cannot be read ({error}); every shard must have "
            "succeeded before the merge runs", reason="RunnerError") from error


def gather(writer: ResultsWriter, config: RunnerConfig, datasets: Sequence[LoadedDataset]
           ) -> Gathered:
    """Read all shards below the task's prefix (`writer`), checked against the plan."""
    blocks = plan([len(d.samples) for d in datasets], config.shards)
    answers: list[list[Prediction | None]] = [[None] * len(d.samples) for d in datasets]
    reused = {b.name: [0, 0] for b in config.benchmarks}
    shards: list[dict[str, Any]] = []
    for index in range(config.shards):
        shard = writer.below(layout.shard_prefix(index))
        try:
            document = json.loads(_read(shard, layout.SHARD_JSON))
            recorded = document["benchmarks"]
            if document["count"] != config.shards or document["index"] != index:
                raise ConfigurationError(
                    f"merge: {shard.uri(layout.SHARD_JSON)} is shard {document['index']} of "
                    f"{document['count']}, not {index} of {config.shards}")
        except (ValueError, KeyError, TypeError) as error:
            raise TransientError(f"merge: {shard.uri(layout.SHARD_JSON)} is unreadable: "
                                 f"{error}", reason="RunnerError") from error
        for b, (benchmark, dataset) in enumerate(zip(config.benchmarks, datasets,
                                                     strict=True)):
            block = blocks[index][b]
            mine = recorded.get(benchmark.name) or {}
            if mine.get("sha256") != dataset.sha256:
                raise ConfigurationError(
                    f"benchmarks[{b}].dataset: {dataset.uri} changed while the shards ran "
                    f"(shard {index} read sha256 {mine.get('sha256')}, the merge "
                    f"{dataset.sha256}); keep datasets unchanged during a run")
            lines = _read(shard, layout.predictions_key(benchmark.name)).decode().splitlines()
            if len(lines) != len(block):
                raise TransientError(
                    f"merge: shard {index} holds {len(lines)} answers for {benchmark.name}, "
                    f"its block has {len(block)}", reason="RunnerError")
            for position, line in zip(block, lines, strict=True):
                sample = dataset.samples[position]
                try:
                    record = json.loads(line)
                    logprobs = record.get("choiceLogprobs")
                    answers[b][position] = Prediction(
                        sample, str(record["prompt"]), str(record["prediction"]),
                        tuple(float(v) for v in logprobs) if logprobs is not None else None)
                    row = record["index"]
                except (ValueError, KeyError, TypeError, AttributeError) as error:
                    raise TransientError(
                        f"merge: shard {index}, {benchmark.name}: unreadable answer for row "
                        f"{sample.index}: {error!r}", reason="RunnerError") from error
                if row != sample.index:
                    raise TransientError(
                        f"merge: shard {index}, {benchmark.name}: answer for row {row} where "
                        f"row {sample.index} belongs", reason="RunnerError")
            report = (document.get("resumed") or {}).get("benchmarks", {}).get(
                benchmark.name) or {}
            reused[benchmark.name][0] += int(report.get("answersReused") or 0)
            reused[benchmark.name][1] += int(report.get("answersRequested") or 0)
        timings = document.get("timings") or {}
        shards.append({"index": index, "samples": sum(len(r) for r in blocks[index]),
                       "attempt": (document.get("resumed") or {}).get("attempt"),
                       "answersReused": sum(
                           int(r.get("answersReused") or 0) for r in
                           ((document.get("resumed") or {}).get("benchmarks") or {}).values()),
                       "timings": timings})
    complete = [[p for p in benchmark if p is not None] for benchmark in answers]
    for b, (found, dataset) in enumerate(zip(complete, datasets, strict=True)):
        if len(found) != len(dataset.samples):  # the plan covers every position once
            raise AssertionError(f"benchmark {b}: {len(found)} of {len(dataset.samples)}")
    benchmarks = {name: {"answersReused": r, "answersRequested": q,
                         "benchmarkReused": q == 0 and r > 0}
                  for name, (r, q) in reused.items()}
    resumed = {"attempt": f"merge-{int(datetime.datetime.now().timestamp())}-{os.getpid()}",
               "answersReused": sum(r for r, _ in reused.values()), "benchmarks": benchmarks}
    starts = [str(s["timings"]["startedAt"]) for s in shards
              if isinstance(s["timings"], dict) and s["timings"].get("startedAt")]
    return Gathered(complete, resumed, {"count": config.shards, "shards": shards},
                    min(starts) if starts else None)
