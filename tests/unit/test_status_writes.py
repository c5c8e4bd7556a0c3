"""When status changes are written (status_writes.py): a pod's quick way to Running costs no
write before Running, a slow one says why once, a finished run is never held; and the same
through the reconciler's write loop on a real event loop."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest
from evaluation_operator.config import OperatorSettings
from evaluation_operator.states import Reason
from evaluation_operator.status_writes import BUSY_RECHECK_SECONDS, hold_seconds
from evaluation_operator.task import Task

from tests.unit.test_reconcile import UID, Cluster, body, job, pod, task

DEBOUNCE, SETTLE = 1.5, 10.0


def hold(reason: Reason | None, written: Reason | None, waited: float) -> float:
    return hold_seconds(reason, written, waited, debounce=DEBOUNCE, settle=SETTLE)


def writes(changes: list[tuple[float, Reason]], until: float) -> list[Reason]:
    """The reasons written for `changes` (seconds after the Job appeared, reason then), as
    the reconciler's loop would write them: hold, recompute on every change, write, repeat."""
    written: list[Reason] = []
    current: Reason | None = None
    since: float | None = None  # first change not yet written
    events = sorted(changes)
    now = 0.0
    while now <= until:
        while events and events[0][0] <= now:
            _, reason = events.pop(0)
            if reason is not current:
                current = reason
                since = now if since is None else since
        if since is not None and current is not None:
            last = written[-1] if written else None
            if current is not last and hold(current, last, now - since) == 0:
                written.append(current)
                since = None
        now = round(now + 0.1, 1)
    return written


def test_a_finished_run_is_never_held() -> None:
    for reason in (Reason.SUCCEEDED, Reason.RUNNER_FAILED, Reason.CANCELLED):
        assert hold(reason, None, 0) == 0
        assert hold(reason, Reason.POD_PENDING, 0) == 0


def test_steps_on_the_way_wait_until_they_have_lasted() -> None:
    assert hold(Reason.POD_PENDING, None, 0) == SETTLE
    assert hold(Reason.STARTING, Reason.POD_PENDING, 4) == SETTLE - 4
    assert hold(Reason.SCHEDULING, None, 12) == 0


def test_running_warnings_and_same_reason_changes_wait_only_the_debounce() -> None:
    assert hold(Reason.RUNNING, None, 0) == DEBOUNCE
    assert hold(Reason.RUNNING, Reason.POD_PENDING, 5) == 0  # held long enough already
    assert hold(Reason.UNSCHEDULABLE, None, 0.5) == DEBOUNCE - 0.5
    assert hold(Reason.QUEUED, None, 0) == DEBOUNCE
    # A new message under the reason already shown (a retry's note, progress).
    assert hold(Reason.POD_PENDING, Reason.POD_PENDING, 0) == DEBOUNCE
    assert hold(None, None, 0) == 0  # nothing to say: the write finds nothing to write


def test_no_status_written_means_no_hold_and_every_reason_is_classified() -> None:
    on_the_way = {r for r in Reason if r.on_the_way}
    assert on_the_way == {Reason.JOB_PENDING, Reason.POD_PENDING, Reason.SCHEDULING,
                          Reason.STARTING}
    assert not any(r.phase.terminal or r.warning for r in on_the_way)


@pytest.mark.parametrize("running_at", [0.3, 2.0, 5.0, 9.5])
def test_a_quick_way_to_running_is_one_write_before_the_end(running_at: float) -> None:
    steps = [(0.0, Reason.POD_PENDING), (running_at * 0.3, Reason.SCHEDULING),
             (running_at * 0.6, Reason.STARTING), (running_at, Reason.RUNNING),
             (60.0, Reason.SUCCEEDED)]
    assert writes(steps, until=70) == [Reason.RUNNING, Reason.SUCCEEDED]


def test_a_slow_start_says_why_once_then_running() -> None:
    steps = [(0.0, Reason.POD_PENDING), (30.0, Reason.SCHEDULING), (31.0, Reason.STARTING),
             (33.0, Reason.RUNNING), (90.0, Reason.SUCCEEDED)]
    assert writes(steps, until=100) == [Reason.POD_PENDING, Reason.RUNNING, Reason.SUCCEEDED]


def test_a_run_that_ends_before_its_pod_shows_running_is_one_write() -> None:
    steps = [(0.0, Reason.POD_PENDING), (0.5, Reason.STARTING), (1.0, Reason.SUCCEEDED)]
    assert writes(steps, until=20) == [Reason.SUCCEEDED]


def test_a_warning_is_not_held_for_the_settle() -> None:
    steps = [(0.0, Reason.POD_PENDING), (0.5, Reason.UNSCHEDULABLE)]
    assert writes(steps, until=5) == [Reason.UNSCHEDULABLE]


BURST = 30.0


def test_while_children_are_created_only_the_end_and_warnings_go_out() -> None:
    def busy(reason: Reason, written: Reason | None, waited: float) -> float:
        return hold_seconds(reason, written, waited, debounce=DEBOUNCE, settle=SETTLE,
                            creating=True, burst=BURST)

    # Past its debounce, Running still waits for a pause in creating: up to `burst`, unless
    # the reconciler wakes it when creating pauses (not asked again every second meanwhile).
    assert busy(Reason.RUNNING, None, 5) == BURST - 5
    assert busy(Reason.JOB_PENDING, None, 12) == BURST - 12  # settled: held too
    assert busy(Reason.POD_PENDING, None, 2) == BURST - 2
    # At most `burst` from the first change: a steady stream of new tasks never hides it.
    assert busy(Reason.RUNNING, None, BURST - 0.25) == 0.25
    assert busy(Reason.RUNNING, None, BURST) == 0
    # What a user must see at once is never held for it.
    assert busy(Reason.SUCCEEDED, None, 0) == 0
    assert busy(Reason.RUNNER_FAILED, Reason.RUNNING, 0) == 0
    assert busy(Reason.UNSCHEDULABLE, None, 5) == 0
    assert busy(Reason.IMAGE_PULL_BACKOFF, None, 0.5) == DEBOUNCE - 0.5


# --- the same through the reconciler ----------------------------------------------------------


def in_loop(settings: OperatorSettings, steps: list[tuple[float, dict[str, Any]]]
            ) -> tuple[list[str], list[float]]:
    """Feed pod states to a reconciler at the given times (seconds); the reasons it wrote and
    when (seconds from the start)."""

    async def scenario() -> tuple[list[str], list[float]]:
        c = Cluster(task())
        c.reconciler.settings = settings
        written_at: list[float] = []
        patch = c.kube.patch_task_status
        started = time.monotonic()

        def timed(namespace: str, name: str, status: dict[str, Any]) -> None:
            written_at.append(time.monotonic() - started)
            patch(namespace, name, status)

        c.kube.patch_task_status = timed  # type: ignore[method-assign]
        for at, pod_ in steps:
            await asyncio.sleep(max(0.0, at - (time.monotonic() - started)))
            c.set(job(), [pod_])
            c.reconciler.mark(UID)
        await c.reconciler.drain()
        return [p["reason"] for p in c.kube.status_patches], written_at

    return asyncio.run(scenario())


MESSAGE = json.dumps({"v": 1, "status": "Succeeded", "overallScore": 0.5,
                      "benchmarks": [{"name": "a", "score": 0.5}]})
SUCCEEDED = pod("Succeeded", terminated={"exitCode": 0, "message": MESSAGE})
FAST = OperatorSettings(s3_bucket="eval-results", status_debounce_ms=100, status_settle_ms=1000)


def test_the_write_loop_writes_a_quick_start_once_and_running_without_waiting_the_settle(
) -> None:
    reasons, at = in_loop(FAST, [(0.0, pod("Pending", node=None)), (0.1, pod("Pending")),
                                 (0.2, pod("Running")), (1.5, SUCCEEDED)])
    assert reasons == ["Running", "Succeeded"]
    assert at[0] < 0.9, "Running waits the debounce, not what is left of the settle"


def test_the_write_loop_shows_a_slow_start_once() -> None:
    reasons, _ = in_loop(FAST, [(0.0, pod("Pending", node=None)), (1.3, pod("Pending")),
                                (1.4, pod("Running")), (2.0, SUCCEEDED)])
    assert reasons == ["Scheduling", "Running", "Succeeded"]


def test_the_write_loop_writes_the_end_at_once_while_a_step_is_held() -> None:
    slow = OperatorSettings(s3_bucket="eval-results", status_debounce_ms=60_000,
                            status_settle_ms=60_000)
    reasons, at = in_loop(slow, [(0.0, pod("Pending", node=None)), (0.2, SUCCEEDED)])
    assert reasons == ["Succeeded"] and at[0] < 1


def test_the_write_loop_holds_running_while_another_tasks_children_are_created() -> None:
    async def scenario() -> list[tuple[str, float]]:
        c = Cluster(task())
        c.reconciler.settings = OperatorSettings(
            s3_bucket="eval-results", status_debounce_ms=100, status_settle_ms=1000,
            status_burst_hold_ms=2500)
        other = task(uid="0b6c4f5e-1111-2222-3333-777788889999")
        c.tasks[other.uid] = [other]
        create = c.kube.create
        started = time.monotonic()

        def slow_create(manifest: dict[str, Any]) -> bool:  # a busy API server
            time.sleep(0.6)
            return create(manifest)

        written: list[float] = []
        patch = c.kube.patch_task_status

        def timed(namespace: str, name: str, status: dict[str, Any]) -> None:
            written.append(time.monotonic() - started)
            patch(namespace, name, status)

        c.kube.create = slow_create  # type: ignore[method-assign]
        c.kube.patch_task_status = timed  # type: ignore[method-assign]
        creating = asyncio.get_running_loop().create_task(c.reconciler.create_children(other))
        c.set(job(), [pod("Running")])
        c.reconciler.mark(UID)
        await creating  # ConfigMap and Job: ~1.2 s
        created = time.monotonic() - started
        await c.reconciler.drain()
        return [(c.kube.status_patches[0]["reason"], written[0] - created)]

    [(reason, after_creates)] = asyncio.run(scenario())
    assert reason == "Running"
    # Written once creating had paused for BUSY_RECHECK_SECONDS, not after the debounce.
    assert after_creates >= BUSY_RECHECK_SECONDS * 0.8


def test_a_held_change_is_weighed_again_when_creating_pauses_not_every_second() -> None:
    """1,000 tasks held through a sweep: each is asked again on its own events and once when
    the sweep pauses, not once a second per task while it lasts."""
    async def scenario() -> tuple[int, list[str]]:
        c = Cluster(task())
        c.reconciler.settings = OperatorSettings(
            s3_bucket="eval-results", status_debounce_ms=100, status_settle_ms=1000,
            status_burst_hold_ms=20000)
        create = c.kube.create

        def slow_create(manifest: dict[str, Any]) -> bool:  # a busy API server
            time.sleep(0.5)
            return create(manifest)

        c.kube.create = slow_create  # type: ignore[method-assign]
        weighed = 0
        hold = c.reconciler._hold

        def counted(uid: str, waited: float) -> float:
            nonlocal weighed
            weighed += uid == UID
            return hold(uid, waited)

        c.reconciler._hold = counted  # type: ignore[method-assign]
        c.set(job(), [pod("Running")])

        async def sweep() -> None:  # other tasks' children: 8 creates of 0.5 s, one by one
            for i in range(8):
                await c.reconciler._post({"kind": "ConfigMap", "metadata": {
                    "namespace": "team-a", "name": f"other-{i}",
                    "ownerReferences": [{"uid": f"other-{i}"}]}})

        sweeping = asyncio.get_running_loop().create_task(sweep())
        await asyncio.sleep(0.1)
        c.reconciler.mark(UID)  # held while the sweep goes on, 4 s
        await sweeping
        await c.reconciler.drain()
        return weighed, [p["reason"] for p in c.kube.status_patches]

    weighed, written = asyncio.run(scenario())
    assert written == ["Running"]
    # Asked when marked, when the sweep paused, and as it is written: not 4 more times.
    assert weighed <= 3


def test_looking_up_a_missing_dataset_configmap_holds_no_other_status() -> None:
    """Only POSTs count as creating: a task waiting for its dataset ConfigMap (looked up,
    nothing created) does not delay the other tasks' status."""
    async def scenario() -> float:
        c = Cluster(task())
        c.reconciler.settings = OperatorSettings(
            s3_bucket="eval-results", status_debounce_ms=100, status_settle_ms=1000,
            status_burst_hold_ms=5000, start_failure_grace_seconds=60)
        raw = body(uid="0b6c4f5e-1111-2222-3333-777788889999")
        raw["metadata"]["creationTimestamp"] = "2026-01-01T00:00:00Z"
        raw["spec"]["benchmarks"][0]["dataset"] = {"configMap": {"name": "qa",
                                                                 "key": "qa.jsonl"}}
        waiting = Task.from_body(raw, c.reconciler.settings)
        c.tasks[waiting.uid] = [waiting]
        keys = c.kube.configmap_keys

        def slow_lookup(namespace: str, name: str) -> frozenset[str] | None:
            time.sleep(0.6)
            return keys(namespace, name)

        c.kube.configmap_keys = slow_lookup  # type: ignore[method-assign]
        started = time.monotonic()
        looking = asyncio.get_running_loop().create_task(c.reconciler.task_seen(waiting))
        c.set(job(), [pod("Running")])
        c.reconciler.mark(UID)
        while not c.kube.status_patches:
            await asyncio.sleep(0.01)
        written = time.monotonic() - started
        await looking
        await c.reconciler.drain()
        assert "create ConfigMap" not in c.kube.calls
        return written

    assert asyncio.run(scenario()) < 0.5  # the debounce, not the lookup plus a second
