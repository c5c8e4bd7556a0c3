"""Creation and status: what the operator does while a task lives.

Event-driven. Every watch event of a task, its Job or a pod (handlers.py) only marks the task
as changed; the status is then computed from what the watches delivered (`World`), never by
reading the Job and pods again, and written only when it differs from the last one written.
Per task at most one write is in flight; changes that arrive meanwhile are folded into the
next write, and in-progress changes (Scheduling, Starting, Running...) wait
`status_debounce_ms` to be merged, while a finished run is written at once.

Every step is idempotent and derived from what exists, so a restarted operator converges:
children have deterministic names (409 means "already made", checked against the owner uid),
and terminal phases are final.

Bounded state only: `_pending` holds tasks with a write scheduled or in flight, `_overrides`,
`_progress` and `_retry` tasks in a particular state; `_written` and `_created` are capped
LRUs. All of it is dropped when the task goes (`forget`).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import heapq
import logging
import random
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from kubernetes.client.exceptions import ApiException

from evaluation_operator import events, memory, metrics, runner_output
from evaluation_operator.collecting import collect_scores
from evaluation_operator.config import OperatorSettings
from evaluation_operator.kube import Api, api_message
from evaluation_operator.manifests import build_configmap, build_job
from evaluation_operator.runner_config import build_runner_config
from evaluation_operator.s3 import ResultsLocation, read_capped
from evaluation_operator.states import Phase, Reason, reason_of
from evaluation_operator.status import (
    Assessment,
    TaskContext,
    assess,
    has_scores,
    render_status,
)
from evaluation_operator.task import Task
from evaluation_operator.world import EMPTY, World

log = logging.getLogger(__name__)
K = TypeVar("K")
V = TypeVar("V")
FOREIGN_CHILD_RETRY_SECONDS = 3.0
FAILED_WRITE_RETRY_SECONDS = 5.0
# Memory freed by deleted tasks goes back to the system once deletions pause this long.
TRIM_AFTER_SECONDS = 5.0


class RetryLater(Exception):
    """Not done yet; the handler asks Kopf to call again after `delay` seconds."""

    def __init__(self, message: str, delay: float) -> None:
        super().__init__(message)
        self.delay = delay


class ForeignChildError(RetryLater):
    """A child with our deterministic name belongs to an older task of the same name (deleted
    and re-created before the garbage collector removed its Job): wait until it is gone."""


class RejectedSpecError(Exception):
    """The API server refused a child built from the spec (422): retrying cannot help."""


def now_iso() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class LRU(Generic[K, V]):
    """A dict that forgets its oldest entries beyond `capacity`."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.items: OrderedDict[K, V] = OrderedDict()

    def get(self, key: K) -> V | None:
        return self.items.get(key)

    def put(self, key: K, value: V) -> None:
        self.items[key] = value
        self.items.move_to_end(key)
        while len(self.items) > self.capacity:
            self.items.popitem(last=False)

    def pop(self, key: K) -> V | None:
        return self.items.pop(key, None)

    def __len__(self) -> int:
        return len(self.items)


def task_context(task: Task, settings: OperatorSettings) -> TaskContext:
    spec = task.spec
    assert spec is not None
    return TaskContext(
        job_name=task.job_name, timeout=task.timeout_text, retries=spec.retries,
        gpus=spec.resources.gpu, gpu_resource=spec.resources.gpu_resource,
        memory=spec.resources.memory, queue_name=spec.scheduling.queue_name,
        start_failure_grace_seconds=settings.start_failure_grace_seconds,
    )


def invalid_spec(message: str) -> Assessment:
    return Assessment(Reason.INVALID_SPEC,
                      f"Invalid spec: {message}. Fix it and create a new task.")


def job_deleted(task: Task) -> Assessment:
    return Assessment(
        Reason.JOB_DELETED,
        f"The Job {task.job_name} was deleted before the run finished; anything it wrote is "
        f"under {task.results_uri}. Create a new task (or delete and re-create this one) to "
        "run again.", scheduled=True)


@dataclass
class _Pending:
    """A task with a status write scheduled or in flight."""

    dirty: bool = True
    wake: asyncio.Event = field(default_factory=asyncio.Event)


class Reconciler:
    def __init__(self, settings: OperatorSettings, api: Api,
                 s3: Callable[[], Any] | None = None,
                 clock: Callable[[], datetime.datetime] | None = None) -> None:
        self.settings = settings
        self.api = api
        self.s3 = s3  # the shared client's factory; None: no S3 (unit tests)
        self.clock = clock or (lambda: datetime.datetime.now(datetime.UTC))
        self.world = EMPTY
        self._pending: dict[str, _Pending] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._written: LRU[str, dict[str, Any]] = LRU(settings.memory_tasks)
        self._created: LRU[str, bool] = LRU(settings.memory_tasks)
        self._creating: set[str] = set()
        self._overrides: dict[str, Assessment] = {}
        self._progress: dict[str, dict[str, Any]] = {}
        self._retry: dict[str, asyncio.TimerHandle] = {}
        # Tasks whose state reads S3 (Reason.reads_s3) -> when to read next (loop time).
        self._polls: dict[str, float] = {}
        self._trim: asyncio.TimerHandle | None = None

    def bind(self, world: World) -> None:
        """The indexes are the same objects for the operator's whole life; handlers hand
        them over on every call (Kopf passes them only to handlers)."""
        self.world = world

    # --- what the handlers call -------------------------------------------------------------

    async def task_seen(self, task: Task) -> None:
        """Any event of a task: make its children once, or recompute its status once after
        a restart. A task's own status writes come back here and cost nothing."""
        if task.deleting or self._is_final(task):
            return
        if task.spec is None:
            self._override(task.uid, invalid_spec(task.spec_error or "unreadable"))
            return
        if self.world.job(task.uid) is not None or self._created.get(task.uid):
            if self._written.get(task.uid) is None and task.uid not in self._pending:
                self.mark(task.uid)  # first sight since start: bring status in line
            return
        override = self._overrides.get(task.uid)
        if override is not None and override.phase.terminal:
            return  # being written (e.g. JobDeleted): never a new Job meanwhile
        if self._status(task).get("startTime"):
            # A runner ran and its Job is gone (deleted while this operator was down, or
            # just now): fail the task; running it again would be a second run.
            self._override(task.uid, job_deleted(task))
            return
        await self.create_children(task)

    def mark(self, uid: str) -> None:
        """Something about this task changed: write its status soon (at once if the run
        ended), folding further changes into the same write."""
        pending = self._pending.get(uid)
        if pending is not None:
            pending.dirty = True
            if self._decide_now(uid):
                pending.wake.set()
            return
        pending = _Pending()
        self._pending[uid] = pending
        self._spawn(self._write_loop(uid, pending))

    async def job_gone(self, uid: str) -> None:
        """The task's Job was deleted: by the TTL or with the task (nothing to do), by
        someone mid-run (the task fails), or before any runner started (made again)."""
        task = self.world.task(uid)
        if task is None or task.deleting or self._is_final(task):
            return
        self._created.pop(uid)
        if self._status(task).get("startTime"):
            self._override(uid, job_deleted(task))
        else:
            await self.create_children(task)

    def set_progress(self, uid: str, progress: dict[str, Any]) -> None:
        task = self.world.task(uid)
        if task is None or self._status(task).get("progress") == progress:
            return
        self._progress[uid] = progress
        self.mark(uid)

    def forget(self, uid: str) -> None:
        """The task is gone: so is everything remembered about it."""
        for table in (self._overrides, self._progress, self._polls):
            table.pop(uid, None)
        self._written.pop(uid)
        self._created.pop(uid)
        handle = self._retry.pop(uid, None)
        if handle is not None:
            handle.cancel()
        self._trim_soon()

    def _trim_soon(self) -> None:
        """Once deletions pause, give the memory they freed back (memory.py): a sweep of
        1,000 tasks deleted otherwise left the operator at its peak RSS."""
        if self._trim is not None:
            self._trim.cancel()
        try:
            self._trim = asyncio.get_running_loop().call_later(TRIM_AFTER_SECONDS, memory.trim)
        except RuntimeError:  # no loop: nothing was running to free
            self._trim = None

    def state_sizes(self) -> dict[str, int]:
        """For tests and the bench: every per-task table, to show none of them leaks."""
        return {"pending": len(self._pending), "written": len(self._written),
                "created": len(self._created), "creating": len(self._creating),
                "overrides": len(self._overrides), "progress": len(self._progress),
                "retry": len(self._retry), "polls": len(self._polls),
                "tasks": len(self._tasks)}

    async def drain(self, timeout: float = 10) -> None:
        """Wait for the scheduled writes (tests; shutdown)."""
        deadline = asyncio.get_running_loop().time() + timeout
        while self._tasks and asyncio.get_running_loop().time() < deadline:
            await asyncio.wait(set(self._tasks), timeout=timeout)

    # --- creation ---------------------------------------------------------------------------

    async def create_children(self, task: Task) -> None:
        """Create the ConfigMap and the Job unless they exist."""
        if task.uid in self._creating or task.spec is None or task.location is None:
            return
        self._creating.add(task.uid)
        try:
            await self._create_owned(task, build_configmap(task, build_runner_config(
                task.spec, name=task.name, namespace=task.namespace, uid=task.uid,
                location=task.location, settings=self.settings)))
            await self._create_owned(task, build_job(task, task.spec, self.settings))
            self._created.put(task.uid, True)
            if self._overrides.get(task.uid) is not None:
                self._overrides.pop(task.uid, None)
                self.mark(task.uid)
        except ForeignChildError as waiting:
            self._override(task.uid, Assessment(Reason.PREVIOUS_RUN_CLEANUP, f"{waiting}."))
            self._retry_later(task.uid, waiting.delay)
        except RejectedSpecError as error:
            self._override(task.uid, invalid_spec(str(error)))
        except Exception as error:  # API unreachable, timeouts: try again, never give up
            log.warning("creating the children of %s failed: %s", task.key, error)
            self._retry_later(task.uid, FAILED_WRITE_RETRY_SECONDS)
        finally:
            self._creating.discard(task.uid)

    async def _create_owned(self, task: Task, manifest: dict[str, Any]) -> None:
        """Create a child. An existing one is ours (a restart) unless it belongs to an older
        task of the same name."""
        try:
            if await self.api.call(self.api.kube.create, manifest):
                return
            meta = manifest["metadata"]
            owner = await self.api.call(self.api.kube.owner_uid, manifest["kind"],
                                        meta["namespace"], meta["name"])
        except ApiException as error:
            if error.status == 422:
                raise RejectedSpecError(api_message(error)) from error
            if error.status == 403:
                log.warning("cannot read %s %s to check its owner (RBAC); assuming it is ours",
                            manifest["kind"], manifest["metadata"]["name"])
                return
            raise
        if owner == "":
            raise RetryLater(f"{manifest['kind']} {meta['name']} vanished while being created",
                             delay=1)
        if owner not in (None, task.uid):
            raise ForeignChildError(
                f"{manifest['kind']} {meta['name']} still belongs to a deleted task of the same "
                "name; waiting for the garbage collector to remove it",
                delay=FOREIGN_CHILD_RETRY_SECONDS)

    def _retry_later(self, uid: str, delay: float) -> None:
        if uid in self._retry:
            return

        def again() -> None:
            self._retry.pop(uid, None)
            task = self.world.task(uid)
            if task is not None:
                self._spawn(self.task_seen(task))

        self._retry[uid] = asyncio.get_running_loop().call_later(delay, again)

    # --- status -----------------------------------------------------------------------------

    def _status(self, task: Task) -> dict[str, Any]:
        """The newest status known: the one written last, else the one watched."""
        return self._written.get(task.uid) or dict(task.status)

    def _is_final(self, task: Task) -> bool:
        phase = self._status(task).get("phase")
        return phase in (Phase.COMPLETED.value, Phase.FAILED.value)

    def _override(self, uid: str, assessment: Assessment) -> None:
        self._overrides[uid] = assessment
        self.mark(uid)

    def _assess(self, task: Task) -> Assessment | None:
        override = self._overrides.get(task.uid)
        job = self.world.job(task.uid)
        if override is not None and (job is None or override.phase.terminal):
            return override
        if task.spec is None:
            return invalid_spec(task.spec_error or "unreadable")
        if job is None:
            return None  # its Job event follows: nothing new to say before
        return assess(job, self.world.pods(task.uid), task_context(task, self.settings),
                      now=self.clock())

    def _decide_now(self, uid: str) -> bool:
        task = self.world.task(uid)
        if task is None:
            return True
        assessment = self._assess(task)
        return assessment is None or assessment.phase.terminal

    def _spawn(self, work: Any) -> None:
        job: asyncio.Task[None] = asyncio.get_running_loop().create_task(work)
        self._tasks.add(job)
        job.add_done_callback(self._tasks.discard)

    async def _write_loop(self, uid: str, pending: _Pending) -> None:
        debounce = self.settings.status_debounce_ms / 1000
        try:
            while pending.dirty:
                if debounce and not self._decide_now(uid):
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(pending.wake.wait(), debounce)
                pending.dirty = False
                pending.wake.clear()
                try:
                    await self.write_status(uid)
                except Exception as error:
                    log.warning("writing the status of task %s failed: %s", uid, error)
                    asyncio.get_running_loop().call_later(FAILED_WRITE_RETRY_SECONDS,
                                                          self.mark, uid)
        finally:
            self._pending.pop(uid, None)

    async def write_status(self, uid: str) -> dict[str, Any] | None:
        """Compute the task's status from the world and write it if it changed."""
        task = self.world.task(uid)
        if task is None or task.deleting or self._is_final(task):
            return None
        assessment = self._assess(task)
        if assessment is None:
            return None
        previous = self._status(task)
        scores = None
        if assessment.reason is Reason.SUCCEEDED:
            assessment, scores = await self._scores(task, assessment)
        status = render_status(
            previous, assessment, generation=task.generation, now=now_iso(),
            job_name="" if assessment.reason is Reason.INVALID_SPEC else task.job_name,
            configmap_name="" if assessment.reason is Reason.INVALID_SPEC
            else task.configmap_name,
            results=_results_field(task), scores=scores)
        progress = self._progress.pop(uid, None)
        if progress and not assessment.phase.terminal:
            status["progress"] = progress
        self._recheck(uid, assessment)
        self._schedule_polls(uid, assessment.reason)
        if status == previous:
            return previous
        await self.api.call(self.api.kube.patch_task_status, task.namespace, task.name, status)
        self._written.put(uid, status)
        if assessment.phase.terminal:
            self._overrides.pop(uid, None)
        await self._after_transition(task, previous, status, assessment)
        return status

    async def _scores(self, task: Task, assessment: Assessment
                      ) -> tuple[Assessment, dict[str, Any] | None]:
        """The scores from the termination message, else from summary.json (collecting.py:
        CollectingResults while it is missing, failed past `results_timeout_seconds`)."""
        message = assessment.runner_summary
        location = task.location
        assert location is not None
        summary: bytes | None = None
        error: Exception | None = None
        if not has_scores(message):
            try:
                if self.s3 is None:
                    raise RuntimeError("no S3 client")
                summary = await self.api.call(read_capped, self.s3(), location, "summary.json",
                                              runner_output.MAX_SUMMARY_BYTES)
            except Exception as failure:
                error = failure

        def read_summary() -> bytes | None:
            if error is not None:
                raise error
            return summary

        return collect_scores(assessment, read_summary, location,
                              limit_seconds=self.settings.results_timeout_seconds,
                              now=self.clock(), s3_endpoint=self.settings.s3_endpoint)

    def _recheck(self, uid: str, assessment: Assessment) -> None:
        """A start failure turns into a failure when its grace period ends, with no event
        to say so: look again then."""
        if assessment.recheck_seconds is not None and uid not in self._retry:
            def again() -> None:
                self._retry.pop(uid, None)
                self.mark(uid)
            self._retry[uid] = asyncio.get_running_loop().call_later(
                assessment.recheck_seconds + 1, again)

    async def _after_transition(self, task: Task, previous: dict[str, Any],
                                status: dict[str, Any], assessment: Assessment) -> None:
        reason = assessment.reason
        if (previous.get("phase"), previous.get("reason")) == (status["phase"], reason.value):
            return
        metrics.observe_transition(task.namespace, task.name, previous, status,
                                   created=task.created)
        if reason.posts_event:
            post = events.warning if reason.warning else events.normal
            post(task, reason.value, status["message"])
        if assessment.phase is Phase.FAILED:
            metrics.record_failure(task.namespace, reason.value)
        if reason.stops_job:
            await self.api.call(self.api.kube.delete_job, task.namespace, task.job_name)
        if assessment.phase is Phase.COMPLETED:
            metrics.record_scores(task.namespace, task.name, status)

    # --- S3 polling: only tasks Running or CollectingResults ---------------------------------

    def _schedule_polls(self, uid: str, reason: Reason) -> None:
        if not reason.reads_s3:
            self._polls.pop(uid, None)
        elif uid not in self._polls:
            # Jitter: tasks that started running together do not read S3 together.
            interval = self.settings.progress_interval(len(self._polls) + 1)
            self._polls[uid] = (asyncio.get_running_loop().time()
                                + interval * random.uniform(0.5, 1.5))

    async def poll_forever(self, tick: float = 1.0) -> None:
        """One loop for the whole operator (not a timer per task): every `tick`, read S3 for
        the tasks that are due, within `progress_reads_per_second` (the most overdue go
        first; the rest stay due). Idle when no task is running."""
        loop = asyncio.get_running_loop()
        rate = self.settings.progress_reads_per_second
        credit = 0.0
        while True:
            await asyncio.sleep(tick)
            credit = min(credit + rate * tick, max(1.0, rate * tick))
            due = due_polls(self._polls, loop.time(), int(credit))
            credit -= len(due)
            for uid in due:
                self._polls[uid] = loop.time() + self.settings.progress_interval(
                    len(self._polls)) * random.uniform(0.9, 1.1)
                self._spawn(self._poll(uid))

    async def _poll(self, uid: str) -> None:
        task = self.world.task(uid)
        if task is None or task.deleting:
            self._polls.pop(uid, None)
            return
        if reason_of(self._status(task).get("reason")) is Reason.COLLECTING_RESULTS:
            self.mark(uid)  # the status write reads summary.json again
        else:
            await self.read_progress(task)

    # --- progress ---------------------------------------------------------------------------

    async def read_progress(self, task: Task) -> None:
        """Mirror progress.json into status (only ever called for a running task)."""
        uri = task.results_uri
        if not uri or self.s3 is None:
            return
        try:
            data = await self.api.call(read_capped, self.s3(), ResultsLocation.from_uri(uri),
                                       "progress.json", runner_output.MAX_PROGRESS_BYTES)
            if data is None:
                return
            value = runner_output.parse_progress(data).status_field()
        except Exception as error:
            # Progress is informational: a bad progress.json is not shown, and the run goes on.
            log.warning("progress.json of %s not shown: %s", task.key, error)
            return
        self.set_progress(task.uid, value)


def due_polls(polls: dict[str, float], now: float, budget: int) -> list[str]:
    """The `budget` most overdue of the tasks due by `now`."""
    return heapq.nsmallest(budget, (uid for uid, due in polls.items() if due <= now),
                           key=polls.__getitem__)


def _results_field(task: Task) -> dict[str, str]:
    if task.location is None:
        return dict(task.status.get("results") or {})
    return {"uri": task.location.uri, "bundle": task.location.bundle_uri}
