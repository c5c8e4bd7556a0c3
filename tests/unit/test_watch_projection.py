"""What Kopf's watchers keep of each object (watch_projection.py): only what is read."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from evaluation_operator import naming, watch_projection
from evaluation_operator.config import OperatorSettings
from evaluation_operator.status import TaskContext, assess
from evaluation_operator.watch_projection import feed
from evaluation_operator.world import (
    JOBS,
    PODS,
    TASKS,
    Store,
    compact_job,
    compact_pod,
    is_merge,
    task_uid_of,
)
from kopf._cogs.clients import watching
from kopf._cogs.structs import references
from kopf._core.reactor import queueing

UID = "11111111-2222-3333-4444-555555555555"
MANAGED = [{"manager": "kube-controller-manager", "fieldsV1": {"f:spec": {}}}] * 20
RESULT = json.dumps({"v": 1, "status": "Succeeded", "overallScore": 0.5,
                     "benchmarks": [{"name": "a", "score": 0.5}]})


def _metadata(**extra: Any) -> dict[str, Any]:
    return {"name": "t-eval-0-abcde", "namespace": "team-a", "uid": "pod-uid",
            "resourceVersion": "42", "creationTimestamp": "2026-01-01T00:00:00Z",
            "labels": {naming.LABEL_TASK_UID: UID, naming.LABEL_MANAGED_BY: naming.MANAGED_BY,
                       naming.LABEL_ROLE: naming.ROLE_MERGE},
            "annotations": {"batch.kubernetes.io/job-completion-index": "0"},
            "finalizers": ["batch.kubernetes.io/job-tracking"],
            "ownerReferences": [{"kind": "Job", "name": "t-eval", "uid": "job-uid"}],
            "managedFields": MANAGED, **extra}


def full_pod() -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": _metadata(deletionTimestamp="2026-01-01T00:05:00Z"),
            "spec": {"nodeName": "gpu-0", "containers": [{"name": "runner", "env": [{}] * 40}],
                     "volumes": [{"name": "token", "projected": {"sources": [{}] * 3}}]},
            "status": {"phase": "Succeeded", "startTime": "2026-01-01T00:00:05Z",
                       "podIP": "10.0.0.1", "conditions": [
                           {"type": "PodScheduled", "status": "True",
                            "lastTransitionTime": "2026-01-01T00:00:01Z"}],
                       "containerStatuses": [{
                           "name": "runner", "image": "runner:1", "imageID": "sha256:x",
                           "state": {"terminated": {"exitCode": 0, "message": RESULT}}}]}}


def full_job() -> dict[str, Any]:
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": _metadata(),
            "spec": {"suspend": False, "completions": 2, "template": {"spec": {
                "containers": [{"name": "runner", "env": [{}] * 40}]}}},
            "status": {"active": 1, "succeeded": 1, "completedIndexes": "0",
                       "startTime": "2026-01-01T00:00:00Z", "conditions": [
                           {"type": "Complete", "status": "True", "reason": "Done",
                            "lastTransitionTime": "2026-01-01T00:01:00Z"}]}}


def test_a_pod_keeps_what_the_operator_and_kopf_read_and_loses_its_spec() -> None:
    pod = full_pod()
    kept = watch_projection.project_pod(pod)
    assert compact_pod(kept) == compact_pod(pod)
    ctx = TaskContext(job_name="t-eval", timeout="2h", retries=2, gpus=1,
                      gpu_resource="nvidia.com/gpu", memory="1Gi")
    job = compact_job(full_job())
    assert assess(job, [compact_pod(kept)], ctx) == assess(job, [pod], ctx)
    # Kopf's identity, filters and deletion checks: all of metadata but managedFields.
    assert kept["metadata"] == {k: v for k, v in pod["metadata"].items()
                                if k != "managedFields"}
    assert task_uid_of(kept["metadata"]) == UID and is_merge(kept)
    assert kept["spec"] == {"nodeName": "gpu-0"} and "podIP" not in kept["status"]
    assert (kept["apiVersion"], kept["kind"]) == ("v1", "Pod")
    assert len(json.dumps(kept)) < len(json.dumps(pod)) / 2


def test_a_job_keeps_its_status_and_loses_its_template() -> None:
    job = full_job()
    kept = watch_projection.project_job(job)
    assert compact_job(kept) == compact_job(job)
    assert "template" not in kept["spec"] and "managedFields" not in kept["metadata"]
    assert kept["metadata"]["finalizers"] == ["batch.kubernetes.io/job-tracking"]


def test_a_task_keeps_everything_but_managed_fields() -> None:
    task: dict[str, Any] = {"apiVersion": "evaluation.dev/v1alpha1", "kind": "EvaluationTask",
            "metadata": {"name": "t", "uid": UID, "managedFields": MANAGED,
                         "annotations": {"evaluation.dev/task_deleted": "{}"}},
            "spec": {"model": {"name": "m"}}, "status": {"phase": "Running"}}
    kept = watch_projection.project_task(task)
    assert kept == {**task, "metadata": {"name": "t", "uid": UID, "annotations": {
        "evaluation.dev/task_deleted": "{}"}}}
    assert task["metadata"]["managedFields"] is MANAGED  # the original is not changed


@pytest.fixture(autouse=True)
def nothing_installed() -> Iterator[None]:
    """No store and no hand-over unless a test installs them (importing the handlers, as
    other tests do, installs the operator's)."""
    before = watch_projection._store, watch_projection._stream_events
    watch_projection._store = watch_projection._stream_events = None
    yield
    watch_projection._store, watch_projection._stream_events = before


def resource(group: str, plural: str) -> references.Resource:
    return references.Resource(group=group, version="v1", plural=plural)


def run_stream(events: list[Any], res: references.Resource) -> list[Any]:
    async def source(**_: Any) -> AsyncIterator[Any]:
        for event in events:
            yield event

    async def drain() -> list[Any]:
        return [e async for e in watch_projection.projecting(source)(resource=res)]

    return asyncio.run(drain())


def test_the_stream_projects_our_kinds_and_passes_everything_else() -> None:
    pod_event = {"type": "MODIFIED", "object": full_pod()}
    listed = {"type": None, "object": full_job()}
    marks = [watching.Bookmark.LISTED, {"type": "BOOKMARK", "object": {"metadata": {}}},
             {"type": "ERROR", "object": {"code": 410}}]
    out = run_stream([pod_event, *marks], resource("", "pods"))
    assert out[0] == {"type": "MODIFIED", "object": watch_projection.project_pod(full_pod())}
    assert out[1:] == marks
    assert run_stream([listed], resource("batch", "jobs"))[0]["object"]["spec"] == {
        "suspend": False, "completions": 2}
    lease = {"type": "ADDED", "object": {"metadata": {"managedFields": MANAGED}}}
    assert run_stream([lease], resource("kopf.dev", "clusterkopfpeerings")) == [lease]


@pytest.fixture
def restored_watch() -> Iterator[None]:
    before = watching.infinite_watch
    yield
    watching.infinite_watch = before


@pytest.mark.usefixtures("restored_watch")
def test_kopf_watches_through_the_installed_stream_once() -> None:
    # Kopf's own function, also when the handlers (imported by another test) installed it.
    original = getattr(watching.infinite_watch, "__wrapped__", watching.infinite_watch)
    watching.infinite_watch = original
    watch_projection.install()
    watch_projection.install()
    # Kopf's watcher looks the function up in the module each time it starts a watch.
    assert vars(queueing)["watching"] is watching
    assert getattr(watching.infinite_watch, "__wrapped__", None) is original


def test_the_operator_installs_it_when_kopf_loads_the_handlers() -> None:
    probe = ("import evaluation_operator.handlers\n"
             "from kopf._cogs.clients import watching\n"
             "print(watching.infinite_watch.__wrapped__.__name__)")
    found = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                           timeout=60, check=True)
    assert found.stdout.strip() == "infinite_watch"


def test_the_store_keeps_what_the_streams_deliver_and_drops_what_is_deleted() -> None:
    store = Store(OperatorSettings())
    task_body = {"metadata": {"name": "t", "namespace": "team-a", "uid": UID},
                 "spec": {}, "status": {"phase": "Evaluating"}}
    job, pod = full_job(), full_pod()
    feed(store, TASKS, "team-a", {"type": None, "object": task_body})
    feed(store, JOBS, "team-a", {"type": "ADDED", "object": watch_projection.project_job(job)})
    feed(store, PODS, "team-a", {"type": "MODIFIED",
                                 "object": watch_projection.project_pod(pod)})
    world = store.world()
    kept = world.task(UID)
    assert kept is not None and kept.status == {"phase": "Evaluating"}
    assert world.merge_job(UID) == compact_job(job) and world.all_pods(UID) == [compact_pod(pod)]
    feed(store, PODS, "team-a", {"type": "DELETED", "object": pod})
    feed(store, JOBS, "team-a", {"type": "DELETED", "object": job})
    feed(store, TASKS, "team-a", {"type": "DELETED", "object": task_body})
    assert (store.tasks, store.jobs, store.pods) == ({}, {}, {})
    # A broken object is logged, never raised into Kopf's watch.
    feed(store, TASKS, "team-a", {"type": "ADDED", "object": {"metadata": None, "spec": 1}})


def test_tasks_wait_until_their_namespace_s_jobs_and_pods_are_listed() -> None:
    store = Store(OperatorSettings())
    handed: list[list[str]] = []
    store.on_ready = handed.append
    assert not store.wait_for_ready("a", "team-a")
    assert not store.wait_for_ready("b", "team-b")
    assert not store.wait_for_ready("gone", "team-a")
    store.take(TASKS, "DELETED", {"metadata": {"uid": "gone"}})  # deleted meanwhile
    feed(store, JOBS, "team-a", watching.Bookmark.LISTED)
    assert handed == [] and not store.ready("team-a")
    feed(store, PODS, "team-a", watching.Bookmark.LISTED)
    assert handed == [["a"]] and store.ready("team-a") and not store.ready("team-b")
    feed(store, TASKS, None, watching.Bookmark.LISTED)  # tasks' own list: no matter
    feed(store, JOBS, None, watching.Bookmark.LISTED)  # cluster-wide watches
    feed(store, PODS, None, watching.Bookmark.LISTED)
    assert handed == [["a"], ["b"]] and store.wait_for_ready("c", "team-c")


def test_the_stream_feeds_the_store_in_order_with_the_list_s_end() -> None:
    store = Store(OperatorSettings())
    watch_projection.install(store)
    try:
        events = [{"type": None, "object": full_pod()}, watching.Bookmark.LISTED]
        out = run_stream(events, resource("", "pods"))
    finally:
        watch_projection._store = None
    assert out[1] is watching.Bookmark.LISTED
    assert store.pods[UID] == {"pod-uid": compact_pod(full_pod())}
    assert ("pods", None) in store._listed


def test_job_and_pod_events_go_to_the_operator_and_never_to_kopf(
        caplog: pytest.LogCaptureFixture) -> None:
    handed: list[tuple[str, str | None, str]] = []

    def children(kind: str, type_: str | None, obj: dict[str, Any]) -> None:
        handed.append((kind, type_, obj["metadata"]["uid"]))
        if type_ == "DELETED":
            raise RuntimeError("a handler bug")

    store = Store(OperatorSettings())
    watch_projection.install(store, children)
    marks = [watching.Bookmark.LISTED, {"type": "BOOKMARK", "object": {"metadata": {}}},
             {"type": "ERROR", "object": {"code": 410}}]
    pods = [{"type": None, "object": full_pod()}, {"type": "MODIFIED", "object": full_pod()},
            {"type": "DELETED", "object": full_pod()}]
    out = run_stream([*pods, *marks], resource("", "pods"))
    # Kopf gets only the watch's own markers: it still lists, resumes and reconnects.
    assert out == marks
    assert handed == [(PODS, None, "pod-uid"), (PODS, "MODIFIED", "pod-uid"),
                      (PODS, "DELETED", "pod-uid")]
    assert "handling a pods event failed" in caplog.text  # logged, the watch goes on
    assert not store.pods  # the store took each first: the deletion too
    assert run_stream([{"type": "ADDED", "object": full_job()}], resource("batch", "jobs")
                      ) == [] and handed[-1][0] == JOBS
    task = {"type": "ADDED", "object": {"metadata": {"name": "t", "uid": UID}}}
    assert run_stream([task], resource(naming.GROUP, naming.PLURAL)) == [task]  # Kopf's


def test_a_task_s_events_go_to_kopf_only_for_its_finalizer_and_its_deletion() -> None:
    """Kopf adds the finalizer when it is missing, runs the purge on deletion and forgets the
    task when it is gone; every other event of a task is the operator's alone."""
    handed: list[tuple[str | None, str]] = []

    def operator(kind: str, type_: str | None, obj: dict[str, Any]) -> None:
        handed.append((type_, obj["metadata"]["name"]))

    def task(name: str, **meta: Any) -> dict[str, Any]:
        return {"apiVersion": f"{naming.GROUP}/{naming.VERSION}", "kind": naming.KIND,
                "metadata": {"name": name, "namespace": "team-a", "uid": f"uid-{name}",
                             "managedFields": MANAGED, **meta},
                "spec": {}}

    finalized = {"finalizers": [naming.FINALIZER]}
    deleting = {**finalized, "deletionTimestamp": "2026-01-01T00:05:00Z"}
    ours = [{"type": None, "object": task("listed", **finalized)},
            {"type": "ADDED", "object": task("added", **finalized)},
            {"type": "MODIFIED", "object": task("modified", **finalized)}]
    kopfs = [{"type": "ADDED", "object": task("no-finalizer")},
             {"type": "ADDED", "object": task("other-finalizer", finalizers=["x/y"])},
             {"type": "MODIFIED", "object": task("deleting", **deleting)},
             {"type": "DELETED", "object": task("gone", **finalized)}]
    watch_projection.install(Store(OperatorSettings()), operator)
    out = run_stream([*ours, *kopfs], resource(naming.GROUP, naming.PLURAL))
    assert handed == [(None, "listed"), ("ADDED", "added"), ("MODIFIED", "modified")]
    assert [e["object"]["metadata"]["name"] for e in out] == [
        "no-finalizer", "other-finalizer", "deleting", "gone"]
    assert all("managedFields" not in e["object"]["metadata"] for e in out)
