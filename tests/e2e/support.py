"""What the e2e tests share: the task they run, waiting on it, the S3 bundle, and the runner's
processes as the host sees them (a container's processes are ordinary host processes)."""

from __future__ import annotations

import io
import json
import os
import signal
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from devcluster.cluster import Cluster

from tests.support.s3 import S3Endpoint

RESULTS_BUCKET = "eval-results"
DATA_BUCKET = "datasets"
TERMINAL = ("Completed", "Failed")

# Multiple choice, answered by letter on the chat API: 3 of 4 right.
QUIZ_ROWS: list[dict[str, Any]] = [
    {"question": "What colour is the sky?", "choices": ["green", "blue", "red"], "answer": 1},
    {"question": "2 + 2 =", "choices": ["3", "4"], "answer": "4"},
    {"question": "Capital of France?", "choices": ["Paris", "Rome"], "answer": "A"},
    {"question": "Largest planet?", "choices": ["Mars", "Jupiter"], "answer": 1},
]
QUIZ_ANSWERS = {"sky": "B", "2 + 2": "The answer is B.", "France": "A", "planet": "A"}
# Generation: one exact answer, one near miss, one with different punctuation.
TRANSLATION_ROWS: list[dict[str, Any]] = [
    {"de": "Das Haus ist klein.", "en": "The house is small."},
    {"de": "Ich liebe Katzen.", "en": "I love cats."},
    {"de": "Guten Morgen.", "en": "Good morning."},
]
TRANSLATION_ANSWERS = {"Das Haus": "The house is small.", "Katzen": "I like cats.",
                       "Morgen": "Good morning!"}


@dataclass
class Timings:
    """Seconds from `kubectl create` to each task's final phase, printed after the run."""

    rows: list[tuple[str, str, float]] = field(default_factory=list)

    def record(self, case: str, outcome: str, seconds: float) -> None:
        self.rows.append((case, outcome, round(seconds, 1)))
        target = os.environ.get("EVAL_E2E_TIMINGS")
        if target:
            Path(target).write_text(json.dumps(
                [{"case": c, "outcome": o, "seconds": s} for c, o, s in self.rows], indent=1))


def quiz_benchmark(name: str = "quiz", uri: str = f"s3://{DATA_BUCKET}/quiz.jsonl"
                   ) -> dict[str, Any]:
    return {"name": name, "dataset": {"uri": uri, "fields": {
        "prompt": "question", "choices": "choices", "reference": "answer"}},
        "task": "multiple-choice", "metrics": ["accuracy"]}


def translation_benchmark(name: str = "wmt-de-en") -> dict[str, Any]:
    return {"name": name, "dataset": {"uri": f"s3://{DATA_BUCKET}/wmt.jsonl",
                                      "fields": {"prompt": "de", "reference": "en"}},
            "task": "generation", "metrics": ["exact-match", "bleu", "rouge-l"]}


def put_datasets(s3: S3Endpoint) -> None:
    client = s3.client()
    for key, rows in (("quiz.jsonl", QUIZ_ROWS), ("wmt.jsonl", TRANSLATION_ROWS)):
        client.put_object(Bucket=DATA_BUCKET, Key=key, Body="".join(
            json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode())


@dataclass
class TaskRun:
    cluster: Cluster
    namespace: str
    name: str
    created_at: float

    def get(self) -> dict[str, Any] | None:
        result = self.cluster.kubectl("get", "evaluationtask", self.name, "-n", self.namespace,
                                      "-o", "json", check=False)
        if result.returncode != 0:
            return None
        task: dict[str, Any] = json.loads(result.stdout)
        return task

    def status(self) -> dict[str, Any]:
        return dict(((self.get() or {}).get("status")) or {})

    def wait(self, what: str, predicate: Any, timeout: float) -> dict[str, Any]:
        def check() -> dict[str, Any] | None:
            status = self.status()
            return status if predicate(status) else None

        result: dict[str, Any] = self.cluster.wait_until(
            f"{self.namespace}/{self.name}: {what}", check, timeout=timeout)
        return result

    def finish(self, timings: Timings, case: str, timeout: float = 240) -> dict[str, Any]:
        status = self.wait("Completed or Failed", lambda s: s.get("phase") in TERMINAL,
                           timeout)
        timings.record(case, f"{status['phase']}/{status.get('reason')}",
                       time.monotonic() - self.created_at)
        return status

    def pods(self) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = self.cluster.kubectl_json(
            "get", "pods", "-n", self.namespace, "-l", f"evaluation.dev/task={self.name}")["items"]
        return items

    def running_pod(self, timeout: float = 120) -> dict[str, Any]:
        def find() -> dict[str, Any] | None:
            return next((p for p in self.pods() if p["status"].get("phase") == "Running"
                         and not p["metadata"].get("deletionTimestamp")), None)

        pod: dict[str, Any] = self.cluster.wait_until(f"a Running pod of {self.name}", find,
                                                      timeout=timeout)
        return pod

    def job(self) -> dict[str, Any]:
        job: dict[str, Any] = self.cluster.kubectl_json(
            "get", "job", f"{self.name}-eval", "-n", self.namespace)
        return job


def create_task(cluster: Cluster, namespace: str, name: str, spec: dict[str, Any]
                ) -> TaskRun:
    manifest = {"apiVersion": "evaluation.dev/v1alpha1", "kind": "EvaluationTask",
                "metadata": {"name": name, "namespace": namespace}, "spec": spec}
    cluster.kubectl("create", "-f", "-", input=json.dumps(manifest))
    return TaskRun(cluster, namespace, name, time.monotonic())


def prefix_of(status: dict[str, Any]) -> str:
    uri: str = status["results"]["uri"]
    assert uri.startswith(f"s3://{RESULTS_BUCKET}/"), uri
    return uri[len(f"s3://{RESULTS_BUCKET}/"):]


def read_object(s3: S3Endpoint, key: str) -> bytes:
    body: bytes = s3.client().get_object(Bucket=RESULTS_BUCKET, Key=key)["Body"].read()
    return body


def versions_under(s3: S3Endpoint, prefix: str) -> list[str]:
    listing = s3.client().list_object_versions(Bucket=RESULTS_BUCKET, Prefix=prefix)
    return [v["Key"] for v in listing.get("Versions", []) + listing.get("DeleteMarkers", [])]


def results_zip(s3: S3Endpoint, status: dict[str, Any]) -> zipfile.ZipFile:
    return zipfile.ZipFile(io.BytesIO(read_object(s3, prefix_of(status) + "results.zip")))


# --- the runner's processes on the host ------------------------------------------------------


def _in_pod(pid: str, pod_uid: str) -> bool:
    try:
        cgroups = Path(f"/proc/{pid}/cgroup").read_text()
    except OSError:
        return False
    return pod_uid in cgroups or pod_uid.replace("-", "_") in cgroups


def runner_processes(pod_uid: str) -> list[int]:
    """PIDs of the runner (python -m evaluation_runner) in that pod's cgroup."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or not _in_pod(entry.name, pod_uid):
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:
            continue
        if b"evaluation_runner" in cmdline:
            found.append(int(entry.name))
    return found


def kill_runner(pod_uid: str) -> int:
    """SIGKILL the runner inside the pod, as the OOM killer or a crash would."""
    pids = runner_processes(pod_uid)
    assert pids, f"no runner process of pod {pod_uid} on this host"
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    return len(pids)


def processes_in_pod(pod_uid: str) -> list[int]:
    return [int(e.name) for e in Path("/proc").iterdir()
            if e.name.isdigit() and _in_pod(e.name, pod_uid)]
