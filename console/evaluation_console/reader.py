"""One read model for both faces: tasks from the API server, details from the bundle.

`Reader` holds no state on disk. It keeps, in memory only, the opened S3 access per task
and the last few parsed sample files, so paging through 10,000 samples does not download
them again for every page.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from evaluation_runner import layout

from evaluation_console import compare as comparing
from evaluation_console import samples as sampling
from evaluation_console.errors import ConsoleError, NotFoundError, ResultsUnavailableError
from evaluation_console.kube import Kube
from evaluation_console.model import (
    BenchmarkRow,
    TaskDetails,
    TaskRow,
    task_details,
    task_row,
)
from evaluation_console.results import TaskResults, open_results

SAMPLE_FILES_KEPT = 6


def split_ref(ref: str, default_namespace: str) -> tuple[str, str]:
    """`name` or `namespace/name`."""
    namespace, _, name = ref.rpartition("/")
    if not name:
        raise ConsoleError(f"{ref!r} is not a task name (NAME or NAMESPACE/NAME)")
    return namespace or default_namespace, name


@dataclass(frozen=True)
class Logs:
    source: str
    text: str


class Reader:
    def __init__(self, kube: Kube) -> None:
        self.kube = kube
        self._results: dict[str, TaskResults] = {}
        self._samples: OrderedDict[tuple[str, str], list[sampling.Sample]] = OrderedDict()
        self._lock = threading.Lock()

    # --- tasks --------------------------------------------------------------------------
    def rows(self, namespace: str | None) -> list[TaskRow]:
        rows = [task_row(t) for t in self.kube.list_tasks(namespace)]
        return sorted(rows, key=lambda r: (r.namespace, r.created, r.name))

    def task(self, namespace: str, name: str) -> dict[str, Any]:
        return self.kube.get_task(namespace, name)

    def results(self, task: dict[str, Any]) -> TaskResults:
        uid = str(task["metadata"].get("uid"))
        with self._lock:
            found = self._results.get(uid)
        if found is None:
            found = open_results(self.kube, task)
            with self._lock:
                self._results[uid] = found
        return found

    def details(self, namespace: str, name: str) -> TaskDetails:
        task = self.task(namespace, name)
        summary: dict[str, Any] | None = None
        note = ""
        if task_row(task).has_bundle:
            try:
                value = json.loads(self.results(task).read(layout.SUMMARY_JSON))
                summary = value if isinstance(value, dict) else None
            except (ResultsUnavailableError, NotFoundError, ValueError) as error:
                note = f"showing the scores from the task's status: {error}"
        return task_details(task, summary, note)

    # --- samples ------------------------------------------------------------------------
    def benchmark(self, details: TaskDetails, benchmark: str | None) -> BenchmarkRow:
        if not details.benchmarks:
            raise NotFoundError(f"task {details.row.key} has no benchmark results yet")
        if benchmark is None:
            return details.benchmarks[0]
        for row in details.benchmarks:
            if row.name == benchmark:
                return row
        names = ", ".join(b.name for b in details.benchmarks)
        raise NotFoundError(f"task {details.row.key} has no benchmark {benchmark!r} "
                            f"(it has: {names})")

    def sample_list(self, namespace: str, name: str, benchmark: BenchmarkRow
                    ) -> list[sampling.Sample]:
        task = self.task(namespace, name)
        cache_key = (str(task["metadata"].get("uid")), benchmark.name)
        with self._lock:
            if cache_key in self._samples:
                self._samples.move_to_end(cache_key)
                return self._samples[cache_key]
        lines = self.results(task).lines(layout.samples_key(benchmark.name))
        parsed = list(sampling.parse_lines(lines, benchmark.primary_metric))
        with self._lock:
            self._samples[cache_key] = parsed
            while len(self._samples) > SAMPLE_FILES_KEPT:
                self._samples.popitem(last=False)
        return parsed

    def samples(self, namespace: str, name: str, benchmark: str | None,
                verdict: sampling.Verdict = sampling.Verdict.ALL, grep: str = "",
                offset: int = 0, limit: int = 50
                ) -> tuple[TaskDetails, BenchmarkRow, sampling.SamplePage]:
        details = self.details(namespace, name)
        bench = self.benchmark(details, benchmark)
        found = self.sample_list(namespace, name, bench)
        return details, bench, sampling.page(found, verdict, grep, offset, limit)

    # --- compare ------------------------------------------------------------------------
    def compare(self, refs: list[tuple[str, str]]
                ) -> tuple[list[TaskDetails], comparing.Comparison]:
        details = [self.details(ns, name) for ns, name in refs]
        return details, comparing.compare(details)

    def sample_differences(self, left: tuple[str, str], right: tuple[str, str],
                           benchmark: str, limit: int = 50
                           ) -> tuple[list[sampling.SampleDiff], int]:
        lists = []
        for ns, name in (left, right):
            bench = self.benchmark(self.details(ns, name), benchmark)
            lists.append(self.sample_list(ns, name, bench))
        return sampling.differences(lists[0], lists[1], limit)

    # --- download, logs, delete ---------------------------------------------------------
    def bundle(self, namespace: str, name: str) -> tuple[TaskResults, int, Iterator[bytes]]:
        task = self.task(namespace, name)
        row = task_row(task)
        if not row.has_bundle:
            raise ResultsUnavailableError(
                f"task {namespace}/{name} is {row.phase.value}: results.zip exists once it "
                "has Completed (or Failed with reason PartiallyFailed)")
        results = self.results(task)
        size, chunks = results.stream(layout.RESULTS_ZIP)
        return results, size, chunks

    def logs(self, namespace: str, name: str) -> Logs:
        task = self.task(namespace, name)
        problems = []
        try:
            results = self.results(task)
            text = results.read(layout.RUNNER_LOG).decode("utf-8", "replace")
            return Logs(results.uri(layout.RUNNER_LOG), text)
        except ConsoleError as error:
            problems.append(str(error))
        try:
            return Logs(f"pod log of {namespace}/{name}", self.kube.pod_log(namespace, name))
        except ConsoleError as error:
            problems.append(str(error))
        raise NotFoundError("no runner log: " + "; ".join(problems))

    def purge_preview(self, namespace: str, name: str) -> str:
        """What deleting the task removes, in words, for the irreversibility warning."""
        task = self.task(namespace, name)
        uri = ((task.get("status") or {}).get("results") or {}).get("uri")
        if not uri:
            return "the task, its Job, pods and ConfigMap (it has no results in S3)"
        try:
            count = self.results(task).count_objects()
            counted = f"{count} object version{'s' if count != 1 else ''}"
        except ConsoleError:
            counted = "every object"
        return f"the task, its Job, pods and ConfigMap, and {counted} under {uri}"

    def delete(self, namespace: str, name: str) -> None:
        self.kube.delete_task(namespace, name)
