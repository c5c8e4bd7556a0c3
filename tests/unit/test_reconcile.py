"""Decisions the operator takes against the API, with a recording fake of the few calls it
makes (`KubeApi`) and the watched world as plain dicts: creating once, writing status only
on change, deleting in the right order, children of an older task, API refusals."""

from __future__ import annotations

import asyncio
import datetime
import json
import sys
import time
from collections.abc import Coroutine
from typing import Any, TypeVar

import pytest
from evaluation_operator import deletion, memory, naming, reconcile
from evaluation_operator.apiclient import ApiError
from evaluation_operator.config import OperatorSettings
from evaluation_operator.events import Recorder
from evaluation_operator.kube import Api, FailedCreate, Found, Throttle
from evaluation_operator.reconcile import LRU, Reconciler, RetryLater
from evaluation_operator.task import Task
from evaluation_operator.world import World, compact_job, compact_pod

UID = "0b6c4f5e-1111-2222-3333-444455556666"
OLD_UID = "99999999-1111-2222-3333-444455556666"
# Every change written at once: these tests are about what is written (when it is written:
# test_status_writes.py).
SETTINGS = OperatorSettings(s3_bucket="eval-results", purge_retry_max_seconds=60,
                            status_debounce_ms=0, status_settle_ms=0)
T = TypeVar("T")


def run(work: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(work)


def body(status: dict[str, Any] | None = None, uid: str = UID) -> dict[str, Any]:
    return {
        "apiVersion": "evaluation.dev/v1alpha1", "kind": "EvaluationTask",
        "metadata": {"name": "t", "namespace": "team-a", "uid": uid, "generation": 1},
        "spec": {"model": {"name": "m", "endpoint": {"url": "http://m/v1"}},
                 "benchmarks": [{"name": "a", "dataset": {"uri": "s3://datasets/a.jsonl"},
                                 "task": "generation", "metrics": ["bleu"]}]},
        "status": status or {},
    }


def task(status: dict[str, Any] | None = None, uid: str = UID) -> Task:
    return Task.from_body(body(status, uid), SETTINGS)


def job(conditions: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return compact_job({"metadata": {"name": "t-eval", "uid": "job-1"}, "spec": {},
                        "status": {"conditions": conditions or []}})


def pod(phase: str, node: str | None = "gpu-node-0", name: str = "",
        terminated: dict[str, Any] | None = None) -> dict[str, Any]:
    state = {"terminated": terminated} if terminated else {}
    return compact_pod({
        "metadata": {"name": name or f"t-eval-{phase.lower()}",
                     "creationTimestamp": "2026-01-01T00:00:01Z"},
        "spec": {"nodeName": node},
        "status": {"phase": phase, "startTime": "2026-01-01T00:00:01Z" if node else None,
                   "containerStatuses": [{"name": "runner", "image": "img", "state": state}]}})


class FakeKube:
    """`KubeApi`, recording every call; `owners` says who owns existing children."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.existing: dict[str, str] = {}  # kind -> owner uid
        self.status_patches: list[dict[str, Any]] = []
        self.refuse_with: ApiError | None = None
        self.configmaps: dict[str, frozenset[str]] = {}  # name -> keys (dataset ConfigMaps)
        self.failed: dict[str, FailedCreate] = {}  # Job uid -> its FailedCreate event
        self.queues: dict[str, Found] = {}
        self.events: list[tuple[str, str]] = []  # (type, reason) of each Event posted

    def create(self, manifest: dict[str, Any]) -> bool:
        if manifest["kind"] == "Event":
            self.events.append((manifest["type"], manifest["reason"]))
            return True
        self.calls.append(f"create {manifest['kind']}")
        if self.refuse_with is not None and manifest["kind"] == "Job":
            raise self.refuse_with
        if manifest["kind"] in self.existing:
            return False
        self.existing[manifest["kind"]] = manifest["metadata"]["ownerReferences"][0]["uid"]
        return True

    def owner_uid(self, kind: str, namespace: str, name: str) -> str | None:
        self.calls.append(f"get {kind}")
        return self.existing.get(kind, "")

    def patch_task_status(self, namespace: str, name: str, status: dict[str, Any]) -> None:
        self.calls.append("patch status")
        self.status_patches.append(status)

    def delete_job(self, namespace: str, name: str) -> None:
        self.calls.append("delete Job")

    def configmap_keys(self, namespace: str, name: str) -> frozenset[str] | None:
        self.calls.append(f"get ConfigMap {name}")
        return self.configmaps.get(name)

    def failed_creates(self, namespace: str) -> dict[str, FailedCreate]:
        self.calls.append("list events")
        return self.failed

    def local_queue(self, namespace: str, name: str) -> Found:
        self.calls.append(f"get LocalQueue {name}")
        return self.queues.get(name, Found.NO)


class Cluster:
    """The watched world the handlers would hand over, and a reconciler on a fake API."""

    def __init__(self, t: Task, s3: Any = None) -> None:
        self.tasks: dict[str, list[Task]] = {t.uid: [t]}
        self.jobs: dict[str, list[dict[str, Any]]] = {}
        self.pods: dict[str, list[dict[str, Any]]] = {}
        self.kube = FakeKube()
        self.reconciler = Reconciler(SETTINGS, Api(self.kube, 2),
                                     s3=(lambda: s3) if s3 is not None else None)
        self.reconciler.bind(World(self.tasks, self.jobs, self.pods))

    def set(self, job_: dict[str, Any] | None = None,
            pods: list[dict[str, Any]] | None = None) -> None:
        if job_ is not None:
            self.jobs[UID] = [job_]
        if pods is not None:
            self.pods[UID] = pods

    async def changed(self) -> None:
        self.reconciler.mark(UID)
        await self.reconciler.drain()


class FakeS3:
    def __init__(self, objects: dict[str, Any] | None = None, fail: bool = False) -> None:
        self.objects = objects or {}
        self.fail = fail
        self.purged: list[str] = []

        class Exceptions:
            class NoSuchKey(Exception):
                def __init__(self, key: str) -> None:
                    super().__init__(key)
                    self.response = {"Error": {"Code": "NoSuchKey"}}

        self.exceptions = Exceptions

    def get_object(self, Bucket: str, Key: str, Range: str = "") -> dict[str, Any]:
        name = Key.rsplit("/", 1)[-1]
        if name not in self.objects:
            raise self.exceptions.NoSuchKey(Key)
        data = json.dumps(self.objects[name]).encode()

        class Body:
            def read(self, *args: Any) -> bytes:
                return data

            def close(self) -> None:
                pass

        return {"Body": Body(), "ContentLength": len(data)}

    def get_paginator(self, name: str) -> Any:
        s3 = self

        class Paginator:
            def paginate(self, Bucket: str, Prefix: str) -> list[dict[str, Any]]:
                if s3.fail:
                    raise ConnectionError("S3 endpoint unreachable")
                s3.purged.append(Prefix)
                return [{}]

        return Paginator()


# --- creation -----------------------------------------------------------------------------


def test_a_new_task_gets_its_configmap_and_job_once() -> None:
    async def scenario() -> list[str]:
        c = Cluster(task())
        await c.reconciler.task_seen(task())
        # Its own status writes and Kopf's finalizer come back as task events before the
        # Job's watch event: no second create.
        await c.reconciler.task_seen(task())
        await c.reconciler.drain()
        return c.kube.calls

    assert run(scenario()) == ["create ConfigMap", "create Job"]


def test_a_task_s_events_are_seen_one_at_a_time_and_those_meanwhile_folded_into_one(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Task events reach the reconciler in the watch stream, not through Kopf's per-object
    worker: `see` is what keeps them in order."""
    async def scenario() -> tuple[list[str], int, dict[str, int]]:
        c = Cluster(task())
        seen: list[str] = []
        running = 0
        most = 0
        release = asyncio.Event()

        async def slow_seen(t: Task) -> None:
            nonlocal running, most
            running += 1
            most = max(most, running)
            seen.append(t.uid)
            await release.wait()
            running -= 1

        monkeypatch.setattr(c.reconciler, "task_seen", slow_seen)
        for _ in range(5):  # five events while the first is being handled
            c.reconciler.see(UID)
            await asyncio.sleep(0)
        release.set()
        await c.reconciler.drain()
        return seen, most, c.reconciler.state_sizes()

    seen, most, sizes = run(scenario())
    assert seen == [UID, UID] and most == 1
    assert sizes["seeing"] == 0


def test_existing_children_of_this_task_are_reused_after_a_restart() -> None:
    async def scenario() -> Cluster:
        c = Cluster(task())
        c.kube.existing = {"ConfigMap": UID, "Job": UID}
        await c.reconciler.task_seen(task())
        await c.reconciler.drain()
        return c

    assert run(scenario()).kube.calls == ["create ConfigMap", "get ConfigMap", "create Job",
                                          "get Job"]


def test_a_restart_with_the_job_in_the_index_makes_no_create_and_no_write() -> None:
    running = task({"phase": "Evaluating", "reason": "Running"})

    async def scenario() -> list[str]:
        c = Cluster(running)
        c.set(job(), [pod("Running")])
        await c.reconciler.task_seen(running)
        await c.reconciler.drain()
        return c.kube.calls

    # The status differs from the stored one only if something changed while down: here it
    # is written once (it had no conditions yet), and never a create.
    assert "create Job" not in run(scenario())


def test_children_of_an_older_task_with_the_same_name_are_waited_out() -> None:
    async def scenario() -> Cluster:
        c = Cluster(task())
        c.kube.existing = {"ConfigMap": OLD_UID}
        await c.reconciler.task_seen(task())
        await c.reconciler.drain()
        c.reconciler.forget(UID)  # cancels the retry timer
        return c

    c = run(scenario())
    assert "create Job" not in c.kube.calls
    assert (c.kube.status_patches[-1]["phase"], c.kube.status_patches[-1]["reason"]) == (
        "Evaluating", "PreviousRunCleanup")


def test_a_job_the_api_server_refuses_fails_the_task_with_its_message() -> None:
    async def scenario() -> dict[str, Any]:
        c = Cluster(task())
        c.kube.refuse_with = ApiError(
            422, "Unprocessable Entity",
            body='{"message": "Job.batch \\"t-eval\\" is invalid: tolerations"}')
        await c.reconciler.task_seen(task())
        await c.reconciler.drain()
        return c.kube.status_patches[-1]

    status = run(scenario())
    assert (status["phase"], status["reason"]) == ("Failed", "InvalidSpec")
    assert "tolerations" in status["message"]


def test_finished_tasks_are_left_alone() -> None:
    async def scenario() -> list[str]:
        c = Cluster(task({"phase": "Completed"}))
        await c.reconciler.task_seen(task({"phase": "Completed"}))
        await c.reconciler.drain()
        return c.kube.calls

    assert run(scenario()) == []


# --- status from the world ----------------------------------------------------------------


def test_status_is_written_only_when_it_changes() -> None:
    async def scenario() -> list[dict[str, Any]]:
        c = Cluster(task())
        c.set(job(), [pod("Running")])
        for _ in range(3):  # e.g. three pod events that change nothing the user sees
            await c.changed()
        return c.kube.status_patches

    patches = run(scenario())
    assert len(patches) == 1 and patches[0]["reason"] == "Running"


def test_changes_arriving_during_the_debounce_are_written_once() -> None:
    settings = OperatorSettings(s3_bucket="eval-results", status_debounce_ms=200)

    async def scenario() -> list[dict[str, Any]]:
        c = Cluster(task())
        c.reconciler.settings = settings
        c.set(job(), [pod("Pending", node=None)])
        c.reconciler.mark(UID)
        await asyncio.sleep(0.05)
        c.set(pods=[pod("Pending")])
        c.reconciler.mark(UID)
        await asyncio.sleep(0.05)
        c.set(pods=[pod("Running")])
        c.reconciler.mark(UID)
        await c.reconciler.drain()
        return c.kube.status_patches

    patches = run(scenario())
    assert [p["reason"] for p in patches] == ["Running"]


def test_success_is_written_at_once_with_the_scores_of_the_message() -> None:
    message = json.dumps({"v": 1, "status": "Succeeded", "overallScore": 0.5,
                          "benchmarks": [{"name": "a", "score": 0.5}]})
    settings = OperatorSettings(s3_bucket="eval-results", status_debounce_ms=60_000)

    async def scenario() -> list[dict[str, Any]]:
        c = Cluster(task())
        c.reconciler.settings = settings
        c.set(job(), [pod("Succeeded", terminated={"exitCode": 0, "message": message})])
        await asyncio.wait_for(c.changed(), timeout=5)  # no 60 s debounce for the end
        return c.kube.status_patches

    patches = run(scenario())
    assert [(p["phase"], p.get("overallScore")) for p in patches] == [("Completed", 0.5)]


def test_scores_come_from_summary_json_when_the_message_is_truncated() -> None:
    summary = {"overallScore": 0.25, "benchmarks": [{"name": "a", "score": 0.25}]}
    truncated = {"exitCode": 0, "message": '{"v": 1, "status": "Succeeded", "truncated": true}'}

    async def scenario(s3: FakeS3) -> dict[str, Any]:
        c = Cluster(task(), s3=s3)
        c.set(job(), [pod("Succeeded", terminated=truncated)])
        await c.changed()
        return c.kube.status_patches[-1]

    assert run(scenario(FakeS3({"summary.json": summary})))["overallScore"] == 0.25
    missing = run(scenario(FakeS3()))
    assert (missing["phase"], missing["reason"]) == ("Evaluating", "CollectingResults")


def test_a_lost_job_of_a_task_that_never_started_is_created_again() -> None:
    async def scenario() -> list[str]:
        c = Cluster(task({"phase": "Evaluating", "reason": "PodPending"}))
        await c.reconciler.job_gone(UID)
        await c.reconciler.drain()
        return c.kube.calls

    assert run(scenario()) == ["create ConfigMap", "create Job"]


def test_a_job_deleted_mid_run_fails_the_task_instead_of_running_again() -> None:
    async def scenario() -> Cluster:
        c = Cluster(task({"phase": "Evaluating", "startTime": "2026-01-01T00:00:00Z"}))
        await c.reconciler.job_gone(UID)
        await c.reconciler.drain()
        return c

    c = run(scenario())
    assert "create Job" not in c.kube.calls
    status = c.kube.status_patches[-1]
    assert (status["phase"], status["reason"]) == ("Failed", "JobDeleted")
    assert f"s3://eval-results/runs/team-a/t/{UID}/" in status["message"]


def test_a_job_removed_by_its_ttl_after_the_end_changes_nothing() -> None:
    async def scenario() -> list[str]:
        c = Cluster(task({"phase": "Completed", "startTime": "2026-01-01T00:00:00Z"}))
        await c.reconciler.job_gone(UID)
        await c.reconciler.drain()
        return c.kube.calls

    assert run(scenario()) == []


def test_an_image_that_cannot_be_pulled_stops_the_job_after_the_grace_period() -> None:
    pulling = compact_pod({"metadata": {"name": "p", "creationTimestamp": "2020-01-01T00:00:00Z"},
                           "spec": {"nodeName": "n"},
                           "status": {"phase": "Pending", "containerStatuses": [{
                               "name": "runner", "image": "img",
                               "state": {"waiting": {"reason": "ErrImagePull"}}}]}})

    async def scenario() -> Cluster:
        c = Cluster(task())
        c.set(job(), [pulling])
        await c.changed()
        return c

    c = run(scenario())
    assert c.kube.status_patches[-1]["reason"] == "ImagePullError"
    assert c.kube.calls[-1] == "delete Job"
    # What `kubectl describe` shows: one Warning, posted through the operator's own client.
    assert c.kube.events == [("Warning", "ImagePullError")]


def test_progress_is_mirrored_and_nothing_is_kept_after_the_task_goes() -> None:
    async def scenario() -> tuple[Cluster, dict[str, int]]:
        t = task({"phase": "Evaluating", "reason": "Running",
                  "results": {"uri": f"s3://eval-results/runs/team-a/t/{UID}/"}})
        c = Cluster(t, s3=FakeS3({"progress.json": {"samplesDone": 3, "samplesTotal": 8}}))
        c.set(job(), [pod("Running")])
        await c.reconciler.read_progress(t)
        await c.reconciler.drain()
        c.reconciler.forget(UID)
        return c, c.reconciler.state_sizes()

    c, sizes = run(scenario())
    assert c.kube.status_patches[-1]["progress"] == {"samplesDone": 3, "samplesTotal": 8,
                                                     "text": "3/8"}
    assert set(sizes.values()) == {0}


def test_no_per_task_table_keeps_an_entry_after_its_task_goes(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Tasks in different states fill different tables (state_sizes finds every table of
    the reconciler by type, also ones added later); after `forget` each is empty again."""
    monkeypatch.setattr(reconcile, "FIRST_LOOKUP_SECONDS", 60.0)  # stays scheduled
    uids = [f"0000000{i}-1111-2222-3333-444455556666" for i in range(3)]
    made, running, pulling = (task(uid=u) for u in uids)
    tasks: dict[str, list[Task]] = {t.uid: [t] for t in (made, running, pulling)}
    jobs: dict[str, list[dict[str, Any]]] = {}
    pods: dict[str, list[dict[str, Any]]] = {}
    kube = FakeKube()
    reconciler = Reconciler(SETTINGS, Api(kube, 2), s3=lambda: FakeS3(
        {"progress.json": {"samplesDone": 3, "samplesTotal": 8}}))
    reconciler.clock = lambda: datetime.datetime(2026, 1, 1, 0, 0, 30, tzinfo=datetime.UTC)
    reconciler.bind(World(tasks, jobs, pods))
    image_pull = compact_pod({
        "metadata": {"name": "p", "creationTimestamp": "2026-01-01T00:00:00Z"},
        "spec": {"nodeName": "n"},
        "status": {"phase": "Pending", "containerStatuses": [{
            "name": "runner", "image": "img", "state": {"waiting": {"reason": "ErrImagePull"}}}]}})

    async def scenario() -> tuple[dict[str, int], dict[str, int]]:
        await reconciler.task_seen(made)  # children created; its Job has no pod yet
        jobs[made.uid] = [job()]
        reconciler.mark(made.uid)
        jobs[running.uid], pods[running.uid] = [job()], [pod("Running")]
        reconciler.mark(running.uid)
        jobs[pulling.uid], pods[pulling.uid] = [job()], [image_pull]  # within its grace
        reconciler.mark(pulling.uid)
        await reconciler.drain()
        await reconciler.read_progress(tasks[running.uid][0])
        alive = reconciler.state_sizes()
        for uid in uids:  # as on a DELETED event: Kopf drops the index entry first
            del tasks[uid]
            reconciler.forget(uid)
        await reconciler.drain()
        return alive, reconciler.state_sizes()

    alive, gone = run(scenario())
    assert {"written", "created", "polls", "lookups", "retry", "progress", "pending"} <= {
        name for name, size in alive.items() if size}
    assert gone == dict.fromkeys(alive, 0)


def test_a_final_status_is_not_remembered_once_the_watch_delivered_it() -> None:
    message = json.dumps({"v": 1, "status": "Succeeded", "overallScore": 0.5,
                          "benchmarks": [{"name": "a", "score": 0.5}]})

    async def scenario() -> tuple[Cluster, int]:
        c = Cluster(task())
        c.set(job(), [pod("Succeeded", terminated={"exitCode": 0, "message": message})])
        await c.changed()
        remembered = c.reconciler.state_sizes()["written"]
        watched = task(c.kube.status_patches[-1])  # our write, as the watch brings it back
        c.tasks[UID] = [watched]
        await c.reconciler.task_seen(watched)
        c.reconciler.mark(UID)  # a late pod event changes nothing either
        await c.reconciler.drain()
        return c, remembered

    c, remembered = run(scenario())
    assert remembered == 1 and c.reconciler.state_sizes()["written"] == 0
    assert [p["phase"] for p in c.kube.status_patches] == ["Completed"]


def test_a_task_deleted_while_its_status_write_is_in_flight_leaves_nothing_behind() -> None:
    loops: list[asyncio.AbstractEventLoop] = []

    class DeletedDuringTheWrite(FakeKube):
        def patch_task_status(self, namespace: str, name: str, status: dict[str, Any]) -> None:
            super().patch_task_status(namespace, name, status)
            # The DELETED event meanwhile: Kopf drops the index entry, the handler forgets.
            del c.tasks[UID]
            loops[0].call_soon_threadsafe(c.reconciler.forget, UID)

    c = Cluster(task())
    c.kube = DeletedDuringTheWrite()
    c.reconciler.api = Api(c.kube, 2)
    c.set(job(), [pod("Running")])

    async def scenario() -> dict[str, int]:
        loops.append(asyncio.get_running_loop())
        await c.changed()
        await asyncio.sleep(0)  # the forget scheduled from the worker thread
        return c.reconciler.state_sizes()

    sizes = run(scenario())
    assert c.kube.status_patches and set(sizes.values()) == {0}


def test_the_api_pools_threads_start_at_once_and_later_calls_start_none() -> None:
    api = Api(FakeKube(), 4)
    try:
        assert api.start_threads() == 4
        started = set(api.pool._threads)

        async def calls() -> list[int]:
            return await asyncio.gather(*(api.call(lambda: 1) for _ in range(8)))

        assert run(calls()) == [1] * 8
        assert set(api.pool._threads) == started
    finally:
        api.close()


def test_lru_and_throttle_are_bounded() -> None:
    lru: LRU[int, int] = LRU(3)
    for i in range(10):
        lru.put(i, i)
    assert len(lru) == 3 and lru.get(0) is None and lru.get(9) == 9
    now = [0.0]
    throttle = Throttle(qps=10, burst=2, clock=lambda: now[0])
    assert [throttle.delay() for _ in range(4)] == [0, 0, pytest.approx(0.1),
                                                    pytest.approx(0.2)]
    now[0] = 10.0
    assert throttle.delay() == 0


# --- deletion -----------------------------------------------------------------------------


async def deleting(t: Task, job_: dict[str, Any] | None, pods: list[dict[str, Any]],
                   retry: int, kube: FakeKube, s3: FakeS3) -> None:
    """`deletion.delete_task` on `kube`, its Events posted (or the error raised) by the end."""
    api = Api(kube, 1)
    recorder = Recorder(api, instance="test")
    try:
        await deletion.delete_task(t, job_, pods, retry, SETTINGS, api, s3, recorder)
    finally:
        await recorder.drain()


def delete(t: Task, job_: dict[str, Any] | None, pods: list[dict[str, Any]], retry: int,
           s3: FakeS3) -> FakeKube:
    kube = FakeKube()
    run(deleting(t, job_, pods, retry, kube, s3))
    return kube


def test_never_started_needs_proof() -> None:
    unscheduled = pod("Pending", node=None)
    assert deletion.runner_never_started({}, job(), [unscheduled])
    assert deletion.runner_never_started({"reason": "InvalidSpec"}, None, [])
    # Anything that hints at a run, or a Job that is gone, means: purge.
    assert not deletion.runner_never_started({"startTime": "x"}, job(), [])
    assert not deletion.runner_never_started({"phase": "Completed"}, None, [])
    assert not deletion.runner_never_started({}, None, [])
    assert not deletion.runner_never_started({}, job(), [pod("Running")])
    failed_job = {**job(), "status": {"failed": 1}}
    assert not deletion.runner_never_started({}, failed_job, [])


def test_task_that_never_ran_is_deleted_without_touching_s3() -> None:
    s3 = FakeS3(fail=True)
    delete(task(), job(), [pod("Pending", node=None)], 0, s3)
    assert s3.purged == []


def test_a_running_runner_is_stopped_before_the_purge() -> None:
    started = task({"startTime": "2026-01-01T00:00:00Z",
                    "results": {"uri": f"s3://eval-results/runs/team-a/t/{UID}/"}})
    s3 = FakeS3()
    kube = FakeKube()
    with pytest.raises(RetryLater, match="to stop before deleting the results"):
        run(deleting(started, job(), [pod("Running")], 0, kube, s3))
    assert kube.calls == ["delete Job"]
    assert s3.purged == [], "purging while the runner still writes would leave data behind"
    # Next attempt: the Job and its pod are gone.
    delete(started, None, [], 1, s3)
    assert s3.purged == [f"runs/team-a/t/{UID}/"]


def test_a_finished_job_is_left_to_the_garbage_collector() -> None:
    done = task({"phase": "Completed", "startTime": "2026-01-01T00:00:00Z",
                 "results": {"uri": f"s3://eval-results/runs/team-a/t/{UID}/"}})
    kube = delete(done, job([{"type": "Complete", "status": "True"}]), [pod("Succeeded")], 0,
                  FakeS3())
    assert kube.calls == []


def test_a_completed_task_s_job_not_yet_marked_complete_is_not_deleted() -> None:
    """The Job controller lags (minutes at 1,000 tasks): the runner succeeded anyway, so the
    Job starts nothing more and deleting it would be one more API write per task."""
    done = task({"phase": "Completed", "startTime": "2026-01-01T00:00:00Z",
                 "results": {"uri": f"s3://eval-results/runs/team-a/t/{UID}/"}})
    s3 = FakeS3()
    kube = delete(done, job(), [pod("Succeeded")], 0, s3)
    assert kube.calls == []
    assert s3.purged == [f"runs/team-a/t/{UID}/"]
    assert kube.events == [("Normal", "ResultsPurged")]
    evaluating = task({"phase": "Evaluating", "startTime": "2026-01-01T00:00:00Z",
                       "results": {"uri": f"s3://eval-results/runs/team-a/t/{UID}/"}})
    assert delete(evaluating, job(), [pod("Succeeded")], 0, FakeS3()).calls == ["delete Job"]


def test_purge_failure_keeps_the_task_and_says_why() -> None:
    started = task({"phase": "Completed", "startTime": "2026-01-01T00:00:00Z",
                    "results": {"uri": f"s3://eval-results/runs/team-a/t/{UID}/"}})
    kube = FakeKube()
    with pytest.raises(RetryLater) as later:
        run(deleting(started, job(), [pod("Succeeded")], 3, kube, FakeS3(fail=True)))
    assert later.value.delay == 40
    assert kube.events == [("Warning", "PurgeFailed")]
    condition = next(c for c in kube.status_patches[-1]["conditions"]
                     if c["type"] == "ResultsPurged")
    assert (condition["status"], condition["reason"]) == ("False", "PurgeFailed")
    assert "S3 endpoint unreachable" in condition["message"]


def test_purge_backoff_grows_to_the_maximum() -> None:
    delays = [deletion.purge_retry_delay(r, 300) for r in range(8)]
    assert delays == [5, 10, 20, 40, 80, 160, 300, 300]


def test_prefix_comes_from_the_spec_when_status_has_none() -> None:
    s3 = FakeS3()
    delete(task({}), None, [], 0, s3)
    assert s3.purged == [f"runs/team-a/t/{UID}/"]


def test_a_pod_that_never_confirms_its_deletion_stops_blocking_after_a_deadline() -> None:
    now = datetime.datetime(2026, 1, 1, 1, 0, tzinfo=datetime.UTC)
    stuck = {**pod("Running"), "metadata": {
        "name": "t-eval-stuck", "deletionTimestamp": "2026-01-01T00:50:00Z",
        "deletionGracePeriodSeconds": 30}}
    stopping = {**pod("Running"), "metadata": {
        "name": "t-eval-stopping", "deletionTimestamp": "2026-01-01T00:59:00Z",
        "deletionGracePeriodSeconds": 30}}
    done = pod("Succeeded")
    assert deletion.pods_still_running([stuck, stopping, done], now) == (
        ["t-eval-stopping"], ["t-eval-stuck"])


def test_the_index_keeps_only_what_status_and_deletion_read() -> None:
    message = json.dumps({"v": 1, "status": "Succeeded", "overallScore": 0.5,
                          "benchmarks": [{"name": "a", "score": 0.5}]})
    full = {"metadata": {"name": "p", "namespace": "team-a", "uid": "x",
                         "labels": {"evaluation.dev/task-uid": UID}, "managedFields": [{}] * 50,
                         "creationTimestamp": "T0", "deletionTimestamp": "T1"},
            "spec": {"nodeName": "n", "containers": [{"env": [{}] * 50}]},
            "status": {"phase": "Succeeded", "startTime": "T0", "containerStatuses": [
                {"name": "runner", "image": "img", "imageID": "sha", "state": {
                    "terminated": {"exitCode": 0, "message": message}}}]}}
    compact = compact_pod(full)
    assert "managedFields" not in compact["metadata"] and "containers" not in compact["spec"]
    assert compact["metadata"]["deletionTimestamp"] == "T1"
    # The same assessment from the projection as from the full pod.
    from evaluation_operator.status import TaskContext, assess
    ctx = TaskContext(job_name="t-eval", timeout="2h", retries=2, gpus=1,
                      gpu_resource="nvidia.com/gpu", memory="1Gi")
    assert assess(job(), [compact], ctx) == assess(job(), [full], ctx)
    world = World({UID: [task()]}, {UID: [job()]}, {UID: [compact]})
    assert world.task(UID) == task() and world.job(UID) == job()
    assert world.pods(UID) == [compact] and world.pods("other") == []


def test_only_running_tasks_are_polled_and_the_poll_forgets_finished_ones() -> None:
    settings = OperatorSettings(s3_bucket="eval-results", status_debounce_ms=0,
                                status_settle_ms=0, progress_interval_seconds=1)
    message = json.dumps({"v": 1, "status": "Succeeded", "overallScore": 0.5,
                          "benchmarks": [{"name": "a", "score": 0.5}]})

    async def scenario() -> tuple[list[dict[str, Any]], int, int]:
        t = task({"results": {"uri": f"s3://eval-results/runs/team-a/t/{UID}/"}})
        c = Cluster(t, s3=FakeS3({"progress.json": {"samplesDone": 1, "samplesTotal": 4}}))
        c.reconciler.settings = settings
        poller = asyncio.get_running_loop().create_task(c.reconciler.poll_forever(tick=0.05))
        c.set(job(), [pod("Pending", node=None)])
        await c.changed()
        scheduling_polls = c.reconciler.state_sizes()["polls"]
        c.set(pods=[pod("Running")])
        await c.changed()
        await asyncio.sleep(2)  # at most 1.5 intervals until the first read
        await c.reconciler.drain()
        c.set(pods=[pod("Succeeded", terminated={"exitCode": 0, "message": message})])
        await c.changed()
        poller.cancel()
        return c.kube.status_patches, scheduling_polls, c.reconciler.state_sizes()["polls"]

    patches, scheduling_polls, finished_polls = run(scenario())
    assert scheduling_polls == 0, "no S3 reads for a task that does not run"
    assert [p["reason"] for p in patches] == ["Scheduling", "Running", "Running", "Succeeded"]
    assert patches[2]["progress"]["text"] == "1/4"
    assert finished_polls == 0


def test_a_task_event_during_the_job_deleted_write_makes_no_new_job() -> None:
    started = task({"phase": "Evaluating", "reason": "Running",
                    "startTime": "2026-01-01T00:00:00Z"})

    async def scenario() -> Cluster:
        c = Cluster(started)
        await c.reconciler.job_gone(UID)
        await c.reconciler.task_seen(started)  # e.g. the finalizer or a status event
        await c.reconciler.drain()
        return c

    c = run(scenario())
    assert not any(call.startswith("create") for call in c.kube.calls)
    assert c.kube.status_patches[-1]["reason"] == "JobDeleted"


def test_after_a_restart_a_started_task_without_its_job_fails_instead_of_running_again() -> None:
    started = task({"phase": "Evaluating", "reason": "Running",
                    "startTime": "2026-01-01T00:00:00Z"})

    async def scenario() -> Cluster:
        c = Cluster(started)
        await c.reconciler.task_seen(started)
        await c.reconciler.drain()
        return c

    c = run(scenario())
    assert c.kube.calls == ["patch status"]
    assert c.kube.status_patches[-1]["reason"] == "JobDeleted"


# --- spec.cancel ---------------------------------------------------------------------------


def cancelled_task(status: dict[str, Any] | None = None, generation: int = 2) -> Task:
    raw = body(status)
    raw["spec"]["cancel"] = True
    raw["metadata"]["generation"] = generation
    return Task.from_body(raw, SETTINGS)


def test_cancelling_a_running_task_fails_it_as_cancelled_then_deletes_the_job() -> None:
    running = {"phase": "Evaluating", "reason": "Running", "observedGeneration": 1,
               "startTime": "2026-01-01T00:00:00Z",
               "progress": {"samplesDone": 3, "samplesTotal": 8, "text": "3/8"}}

    async def scenario() -> Cluster:
        c = Cluster(cancelled_task(running))
        c.set(job(), [pod("Running")])
        await c.reconciler.task_seen(cancelled_task(running))
        await c.reconciler.drain()
        # The Job's deletion comes back as a watch event: nothing more happens.
        c.jobs.clear()
        await c.reconciler.job_gone(UID)
        await c.reconciler.task_seen(cancelled_task(c.kube.status_patches[-1]))
        await c.reconciler.drain()
        return c

    c = run(scenario())
    assert c.kube.calls == ["patch status", "delete Job"]  # the verdict first, then the stop
    status = c.kube.status_patches[-1]
    assert (status["phase"], status["reason"], status["observedGeneration"]) == (
        "Failed", "Cancelled", 2)
    assert "while Running, 3/8 samples scored" in status["message"]
    assert "s3://eval-results/runs/team-a/t/" in status["message"]  # results are kept
    assert status["startTime"] == "2026-01-01T00:00:00Z" and status["completionTime"]
    assert status["progress"]["text"] == "3/8"


def test_a_task_cancelled_before_its_job_exists_never_creates_one() -> None:
    async def scenario() -> Cluster:
        c = Cluster(cancelled_task(generation=1))
        await c.reconciler.task_seen(cancelled_task(generation=1))
        await c.reconciler.drain()
        await c.reconciler.job_gone(UID)  # e.g. an old Job event: still no Job
        await c.reconciler.drain()
        return c

    c = run(scenario())
    assert not any(call.startswith("create") for call in c.kube.calls)
    status = c.kube.status_patches[-1]
    assert (status["phase"], status["reason"]) == ("Failed", "Cancelled")
    assert "before its Job was created" in status["message"]


def test_a_cancel_arriving_while_the_children_are_created_makes_no_job() -> None:
    class CancelDuringCreate(FakeKube):
        """The user cancels while the ConfigMap is being created."""

        def __init__(self, tasks: dict[str, list[Task]]) -> None:
            super().__init__()
            self.tasks = tasks

        def create(self, manifest: dict[str, Any]) -> bool:
            self.tasks[UID] = [cancelled_task()]
            return super().create(manifest)

    async def scenario() -> Cluster:
        c = Cluster(task())
        c.kube = CancelDuringCreate(c.tasks)
        c.reconciler.api = Api(c.kube, 2)
        await c.reconciler.task_seen(task())
        await c.reconciler.task_seen(cancelled_task())
        await c.reconciler.drain()
        return c

    c = run(scenario())
    assert c.kube.calls[0] == "create ConfigMap" and "create Job" not in c.kube.calls
    assert c.kube.status_patches[-1]["reason"] == "Cancelled"


def test_cancelling_a_finished_task_changes_nothing_but_the_observed_generation() -> None:
    completed: dict[str, Any] = {
        "phase": "Completed", "reason": "Succeeded", "observedGeneration": 1,
        "overallScore": 0.5, "conditions": [
            {"type": "Ready", "status": "True", "reason": "Succeeded", "message": "",
             "observedGeneration": 1, "lastTransitionTime": "2026-01-01T00:00:00Z"}]}

    async def scenario() -> Cluster:
        c = Cluster(cancelled_task(completed))
        await c.reconciler.task_seen(cancelled_task(completed))
        await c.reconciler.task_seen(cancelled_task(completed))  # its own write coming back
        await c.reconciler.drain()
        return c

    c = run(scenario())
    assert c.kube.calls == ["patch status"]
    assert c.kube.events == [("Normal", "CancelIgnored")]
    status = c.kube.status_patches[0]
    assert status == {**completed, "observedGeneration": 2, "conditions": [
        {**completed["conditions"][0], "observedGeneration": 2}]}


# --- missing references: ConfigMaps looked up first, FailedCreate events, LocalQueues ------


def configmap_task(status: dict[str, Any] | None = None) -> Task:
    raw = body(status)
    raw["metadata"]["creationTimestamp"] = "2026-01-01T00:00:00Z"
    raw["spec"]["benchmarks"][0]["dataset"] = {"configMap": {"name": "qa", "key": "qa.jsonl"}}
    return Task.from_body(raw, OperatorSettings(**{**SETTINGS.__dict__,
                                                   "start_failure_grace_seconds": 60}))


def test_a_missing_dataset_configmap_holds_back_the_job_until_it_exists() -> None:
    async def scenario() -> tuple[Cluster, dict[str, Any], list[str]]:
        t = configmap_task()
        c = Cluster(t)
        c.reconciler.settings = OperatorSettings(**{**SETTINGS.__dict__,
                                                    "start_failure_grace_seconds": 60})
        c.reconciler.clock = lambda: datetime.datetime(2026, 1, 1, 0, 0, 10,
                                                       tzinfo=datetime.UTC)
        await c.reconciler.task_seen(t)
        await c.reconciler.drain()
        waiting = c.kube.status_patches[-1]
        calls = list(c.kube.calls)
        c.kube.configmaps["qa"] = frozenset({"qa.jsonl"})
        await c.reconciler.task_seen(t)
        await c.reconciler.drain()
        return c, waiting, calls

    c, waiting, calls = run(scenario())
    assert calls == ["get ConfigMap qa", "patch status"]  # no Job, no runner ConfigMap
    assert (waiting["phase"], waiting["reason"]) == ("Evaluating", "MissingReference")
    assert waiting["message"].startswith('spec.benchmarks[0].dataset.configMap.name: '
                                         'ConfigMap "qa" not found in namespace "team-a"')
    assert "still missing at 2026-01-01T00:01:00Z" in waiting["message"]
    assert c.kube.calls[2:] == ["get ConfigMap qa", "create ConfigMap", "create Job"]
    assert c.reconciler.state_sizes()["overrides"] == 0


def test_a_dataset_configmap_missing_past_the_grace_fails_the_task() -> None:
    async def scenario() -> dict[str, Any]:
        t = configmap_task()
        c = Cluster(t)
        c.reconciler.settings = OperatorSettings(**{**SETTINGS.__dict__,
                                                    "start_failure_grace_seconds": 60})
        c.reconciler.clock = lambda: datetime.datetime(2026, 1, 1, 0, 5, tzinfo=datetime.UTC)
        c.kube.configmaps["qa"] = frozenset({"other.jsonl"})
        await c.reconciler.task_seen(t)
        await c.reconciler.drain()
        return c.kube.status_patches[-1]

    failed = run(scenario())
    assert (failed["phase"], failed["reason"]) == ("Failed", "ReferenceNotFound")
    assert failed["message"].startswith('spec.benchmarks[0].dataset.configMap.key: ConfigMap '
                                        '"qa" in namespace "team-a" has no key "qa.jsonl"')


def test_a_job_without_a_pod_is_explained_by_its_failed_create_event(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(reconcile, "FIRST_LOOKUP_SECONDS", 0.0)
    raw = body()
    raw["spec"]["scheduling"] = {"priorityClassName": "urgent"}
    t = Task.from_body(raw, SETTINGS)

    async def scenario() -> Cluster:
        c = Cluster(t)
        c.kube.failed = {"job-1": FailedCreate(
            'pods "t-eval-1" is forbidden: no PriorityClass with name urgent was found',
            datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC))}
        c.set(job(), [])
        await c.changed()
        c.set(pods=[pod("Running")])  # once a pod exists, no more lookups
        await c.changed()
        return c

    c = run(scenario())
    failed = c.kube.status_patches[0]
    # The grace (180 s) is long over for a refusal first seen at 2026-01-01.
    assert (failed["phase"], failed["reason"]) == ("Failed", "ReferenceNotFound")
    assert failed["message"].startswith('spec.scheduling.priorityClassName: PriorityClass '
                                        '"urgent" not found')
    assert c.kube.calls.count("list events") == 1 and "delete Job" in c.kube.calls
    assert c.reconciler.state_sizes()["lookups"] == 0


def test_a_queued_task_whose_local_queue_is_missing_says_so_and_shares_the_lookup(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(reconcile, "FIRST_LOOKUP_SECONDS", 0.0)
    raw = body()
    raw["spec"]["scheduling"] = {"queueName": "gpu-q"}
    t = Task.from_body(raw, SETTINGS)
    suspended = compact_job({"metadata": {"name": "t-eval", "uid": "job-1"},
                             "spec": {"suspend": True}, "status": {}})

    async def scenario() -> Cluster:
        c = Cluster(t)
        c.set(suspended, [])
        await c.changed()
        c.reconciler._lookups[UID].due = 0  # due again: the queue's answer is cached
        await c.changed()
        return c

    c = run(scenario())
    status = c.kube.status_patches[-1]
    assert status["reason"] == "MissingReference"
    assert status["message"].startswith('spec.scheduling.queueName: LocalQueue "gpu-q" not '
                                        'found in namespace "team-a"')
    assert c.kube.calls.count("get LocalQueue gpu-q") == 1


def test_failed_create_events_are_listed_once_per_namespace_for_all_its_tasks() -> None:
    async def scenario() -> list[str]:
        c = Cluster(task())
        for _ in range(3):  # three tasks of team-a looking within EVENTS_LOOKUP_SECONDS
            await c.reconciler._failed_creates_in("team-a")
        await c.reconciler._failed_creates_in("team-b")
        return c.kube.calls

    assert run(scenario()) == ["list events", "list events"]


def test_failed_create_events_are_listed_once_while_a_list_is_in_flight() -> None:
    """Thousands of tasks waiting for pods ask at the same moment (the list queued behind
    creates): one list answers them all."""
    async def scenario() -> tuple[list[str], int]:
        c = Cluster(task())
        answers = await asyncio.gather(*(c.reconciler._failed_creates_in("team-a")
                                         for _ in range(50)))
        return c.kube.calls, len(answers)

    assert run(scenario()) == (["list events"], 50)


# --- a sharded run (spec.parallelism) -------------------------------------------------------


def sharded_task(status: dict[str, Any] | None = None) -> Task:
    raw = body(status)
    raw["spec"]["parallelism"] = 2
    return Task.from_body(raw, SETTINGS)


def test_every_shard_done_creates_the_merge_job_once_and_a_gone_shards_job_is_no_failure(
) -> None:
    complete = {"type": "Complete", "status": "True"}
    shards = compact_job({"metadata": {"name": "t-eval"}, "spec": {"completions": 2},
                          "status": {"completedIndexes": "0-1", "conditions": [complete]}})

    async def scenario() -> Cluster:
        c = Cluster(sharded_task({"phase": "Evaluating", "reason": "Running",
                                  "startTime": "2026-01-01T00:00:01Z"}))
        c.set(shards, [])
        await c.changed()
        await c.changed()  # the merge Job's own event has not arrived: 409 at most, no loop
        # The shards' Job goes by its TTL before the merge ends: the run goes on.
        c.jobs[UID] = []
        await c.reconciler.job_gone(UID)
        await c.reconciler.drain()
        return c

    c = run(scenario())
    # Only the merge Job is made (the shards' Job exists; the ConfigMap is never made again).
    assert "create Job" in c.kube.calls and "create ConfigMap" not in c.kube.calls
    assert all(p["reason"] == "Merging" for p in c.kube.status_patches)
    last = c.kube.status_patches[-1]
    assert last["shards"] == {"total": 2, "done": 2, "failed": 0, "text": "2/2",
                              "merge": "Pending"}
    assert "JobDeleted" not in [p["reason"] for p in c.kube.status_patches]


def test_progress_reads_stay_within_the_budget_however_many_tasks_run() -> None:
    """40 running tasks, all due, read every second if they could: the poller reads at
    most `progress_reads_per_second` and the most overdue first."""
    settings = OperatorSettings(s3_bucket="eval-results", progress_interval_seconds=1,
                                progress_reads_per_second=10)
    uids = [f"0b6c4f5e-1111-2222-3333-{i:012d}" for i in range(40)]
    reads: list[str] = []

    class CountingS3(FakeS3):
        def get_object(self, Bucket: str, Key: str, Range: str = "") -> dict[str, Any]:
            reads.append(Key.split("/")[-2])
            return super().get_object(Bucket, Key, Range)

    async def scenario() -> Reconciler:
        running = {"phase": "Evaluating", "reason": "Running"}
        c = Cluster(task(running, uids[0]), s3=CountingS3({"progress.json": {
            "samplesDone": 1, "samplesTotal": 4}}))
        c.reconciler.settings = settings
        for overdue, uid in enumerate(uids):
            c.tasks[uid] = [task(running, uid)]
            c.reconciler._polls[uid] = -100.0 + overdue  # uids[0] the most overdue
        poller = asyncio.get_running_loop().create_task(c.reconciler.poll_forever(tick=0.05))
        await asyncio.sleep(1.5)
        poller.cancel()
        return c.reconciler

    reconciler = run(scenario())
    assert 10 <= len(reads) <= 16, reads  # 10/s over 1.5 s, not 40 at once
    assert reads[:10] == uids[:10]
    # Each task's next read is stretched so that all 40 fit the budget: ~4 s apart.
    assert settings.progress_interval(40) == 4.0
    assert reconciler.state_sizes()["polls"] == 40


def test_cancelling_a_sharded_run_while_it_merges_stops_the_merge_job_too() -> None:
    complete = {"type": "Complete", "status": "True"}
    shards = compact_job({"metadata": {"name": "t-eval"}, "spec": {"completions": 2},
                          "status": {"completedIndexes": "0-1", "conditions": [complete]}})
    merging = compact_job({"metadata": {"name": "t-merge", "labels": {
        naming.LABEL_ROLE: naming.ROLE_MERGE}}, "spec": {}, "status": {"active": 1}})
    running = {"phase": "Evaluating", "reason": "Merging", "observedGeneration": 1,
               "startTime": "2026-01-01T00:00:01Z"}

    def cancelled_sharded() -> Task:
        raw = body(running)
        raw["spec"]["parallelism"] = 2
        raw["spec"]["cancel"] = True
        raw["metadata"]["generation"] = 2
        return Task.from_body(raw, SETTINGS)

    async def scenario() -> Cluster:
        c = Cluster(cancelled_sharded())
        c.jobs[UID] = [shards, merging]
        await c.reconciler.task_seen(cancelled_sharded())
        await c.reconciler.drain()
        return c

    c = run(scenario())
    assert c.kube.status_patches[-1]["reason"] == "Cancelled"
    assert c.kube.calls.count("delete Job") == 2  # the shards' Job and the merge Job


def test_the_trim_shrinks_the_reconcilers_and_the_stores_tables_to_what_they_hold(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """After a sweep is deleted, no per-task table keeps the storage of 1,000 entries."""
    monkeypatch.setattr(memory, "trim", lambda: True)
    tasks: dict[str, Any] = {f"uid-{i}": object() for i in range(1000)}
    reconciler = Reconciler(SETTINGS, Api(FakeKube(), 2))
    reconciler.bind(World(tasks, {}, {}))
    for i in range(1000):
        reconciler._polls[f"uid-{i}"] = 0.0
        reconciler._written.put(f"uid-{i}", {})
    for i in range(1, 1000):
        reconciler.forget(f"uid-{i}")
        del tasks[f"uid-{i}"]
    sizes = [sys.getsizeof(t) for t in (reconciler._polls, reconciler._written.items, tasks)]

    reconciler.trim_memory()

    assert list(tasks) == list(reconciler._polls) == ["uid-0"]
    assert reconciler._written.get("uid-0") == {}
    after = [sys.getsizeof(t) for t in (reconciler._polls, reconciler._written.items, tasks)]
    assert all(now * 10 < before for now, before in zip(after, sizes, strict=True)), after


def test_memory_is_handed_back_once_the_last_jobs_and_pods_are_gone_too(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A deleted task's Job and pod are deleted after it (garbage collector, TTL): their
    index entries are freed then, so their deletions also lead to a trim, once they pause."""
    trims: list[float] = []
    monkeypatch.setattr(reconcile, "TRIM_AFTER_SECONDS", 0.05)
    monkeypatch.setattr(memory, "trim", lambda: trims.append(time.monotonic()))
    reconciler = Reconciler(SETTINGS, Api(FakeKube(), 2))
    reconciler.bind(World({}, {}, {}))  # the task is gone already

    async def scenario() -> list[float]:
        deleted = time.monotonic()
        for _ in range(3):
            await reconciler.job_gone(UID)
            reconciler.pod_gone(UID)
            await asyncio.sleep(0.02)  # deletions keep coming: no trim yet
        assert trims == []
        await asyncio.sleep(0.1)
        await reconciler.drain()
        return [t - deleted for t in trims]

    after = run(scenario())
    assert len(after) == 1 and after[0] >= 0.05 + 2 * 0.02
