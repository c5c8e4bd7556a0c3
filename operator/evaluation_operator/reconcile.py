"""Creation and status: what the operator does while a task lives.

Event-driven. Every watch event of a task, its Job or a pod (handlers.py) only marks the task
as changed; the status is then computed from what the watches delivered (`World`), never by
reading the Job and pods again, and written only when it differs from the last one written.
Per task at most one write is in flight; changes that arrive meanwhile are folded into the
next write. When to write is `status_writes.hold_seconds`: a finished run at once, steps on
the way to a running pod only once they last `status_settle_ms`, other in-progress changes
after `status_debounce_ms`.

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
import math
import random
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from evaluation_operator import events, memory, metrics, references, runner_output
from evaluation_operator.apiclient import ApiError
from evaluation_operator.benchmark_status import progress_fields
from evaluation_operator.collecting import collect_scores
from evaluation_operator.config import OperatorSettings
from evaluation_operator.gates import CONDITION as PASSED_CONDITION
from evaluation_operator.gates import GateReason
from evaluation_operator.kube import Api, FailedCreate, Found, api_message
from evaluation_operator.manifests import build_configmap, build_job, build_merge_job
from evaluation_operator.runner_config import build_runner_config
from evaluation_operator.s3 import SHARDS_DIRECTORY, ResultsLocation, read_capped
from evaluation_operator.sharded import assess_sharded
from evaluation_operator.states import Phase, Reason, reason_of
from evaluation_operator.status import (
    Assessment,
    TaskContext,
    acknowledge_generation,
    assess,
    condition_of,
    grace_left_since,
    has_scores,
    missing_reference,
    render_status,
)
from evaluation_operator.status_writes import BUSY_RECHECK_SECONDS, hold_seconds
from evaluation_operator.task import Task
from evaluation_operator.world import EMPTY, World

log = logging.getLogger(__name__)
K = TypeVar("K")
V = TypeVar("V")
FOREIGN_CHILD_RETRY_SECONDS = 3.0
FAILED_WRITE_RETRY_SECONDS = 5.0
# Looking up what Kubernetes reports about a missing reference (see `_look_up`): first look
# this long after the Job appears (the Job controller tries to create the pod meanwhile), then
# again at these intervals while the situation lasts.
FIRST_LOOKUP_SECONDS = 2.0
EVENTS_LOOKUP_SECONDS = 5.0
QUEUE_LOOKUP_SECONDS = 30.0
CONFIGMAP_RECHECK_SECONDS = 5.0
# Memory freed by deleted tasks goes back to the system once deletions pause this long.
TRIM_AFTER_SECONDS = 5.0


# Reconciler tables keyed by namespace or queue, not by task: bounded LRUs, kept.
SHARED_TABLES = frozenset({"_queues", "_failed_creates"})


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


def task_context(task: Task, settings: OperatorSettings, lookup: _Lookup | None = None
                 ) -> TaskContext:
    spec = task.spec
    assert spec is not None
    return TaskContext(
        job_name=task.job_name, timeout=task.timeout_text, retries=spec.retries,
        gpus=spec.resources.gpu, gpu_resource=spec.resources.gpu_resource,
        memory=spec.resources.memory, queue_name=spec.scheduling.queue_name,
        start_failure_grace_seconds=settings.start_failure_grace_seconds,
        namespace=task.namespace, references=references.references(spec),
        failed_create=lookup.failed_create if lookup else "",
        failed_create_since=lookup.failed_create_since if lookup else None,
        missing_queue=lookup.missing_queue if lookup else None,
        shards=spec.parallelism,
    )


def invalid_spec(message: str) -> Assessment:
    return Assessment(Reason.INVALID_SPEC,
                      f"Invalid spec: {message}. Fix it and create a new task.")


def job_deleted(task: Task, name: str | None = None) -> Assessment:
    return Assessment(
        Reason.JOB_DELETED,
        f"The Job {name or task.job_name} was deleted before the run finished; anything it "
        "wrote is "
        f"under {task.results_uri}. Create a new task (or delete and re-create this one) to "
        "run again.", scheduled=True)


def cancelled(task: Task, previous: dict[str, Any], job_existed: bool) -> Assessment:
    """spec.cancel: true on a task still evaluating. The Job goes (`Reason.stops_job`); what
    the runner uploaded stays until the task is deleted."""
    if not job_existed:
        return Assessment(
            Reason.CANCELLED,
            "Cancelled (spec.cancel: true) before its Job was created: nothing ran and "
            "nothing was written to S3. To evaluate, create a new task.")
    was = previous.get("reason") or "starting"
    done = (previous.get("progress") or {}).get("text")
    progress = f", {done} samples scored" if done else ""
    return Assessment(
        Reason.CANCELLED,
        f"Cancelled (spec.cancel: true) while {was}{progress}: the Job {task.job_name} was "
        f"deleted and its runner pod stopped. What the runner had uploaded is kept under "
        f"{task.results_uri} (runner.log, progress.json, finished parts) until the task is "
        "deleted. To evaluate again, create a new task.")


@dataclass
class _Lookup:
    """What the reconciler looked up for a task whose Job has no pod, or is queued."""

    due: float  # loop time of the next look
    timer: asyncio.TimerHandle | None = None
    failed_create: str = ""
    failed_create_since: datetime.datetime | None = None
    missing_queue: references.Missing | None = None


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
        self.events = events.Recorder(api)
        self.s3 = s3  # the shared client's factory; None: no S3 (unit tests)
        self.clock = clock or (lambda: datetime.datetime.now(datetime.UTC))
        self.world = EMPTY
        self._pending: dict[str, _Pending] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._written: LRU[str, dict[str, Any]] = LRU(settings.memory_tasks)
        self._created: LRU[str, bool] = LRU(settings.memory_tasks)
        self._creating: set[str] = set()
        # Tasks whose `task_seen` runs -> whether another event came meanwhile.
        self._seeing: dict[str, bool] = {}
        # Child POSTs in flight, and when the last one ended (loop time): a sweep being made.
        self._creates_in_flight = 0
        self._last_created = -math.inf
        self._sweep_check: asyncio.TimerHandle | None = None
        self._overrides: dict[str, Assessment] = {}
        self._progress: dict[str, dict[str, Any]] = {}
        self._retry: dict[str, asyncio.TimerHandle] = {}
        # Tasks whose state reads S3 (Reason.reads_s3) -> when to read next (loop time).
        self._polls: dict[str, float] = {}
        # Tasks whose Job has no pod yet or is queued: what was looked up about them.
        self._lookups: dict[str, _Lookup] = {}
        # LocalQueue lookups shared by the tasks of one queue: (namespace, name) -> (when, found).
        self._queues: LRU[tuple[str, str], tuple[float, Found]] = LRU(1024)
        # FailedCreate events of a namespace's Jobs, shared by its tasks: ns -> (when, by uid).
        self._failed_creates: LRU[str, tuple[float, dict[str, FailedCreate]]] = LRU(1024)
        self._failed_creates_reading: dict[str, asyncio.Task[dict[str, FailedCreate]]] = {}
        self._trim: asyncio.TimerHandle | None = None

    def bind(self, world: World) -> None:
        """What the watches delivered (world.Store), for the operator's whole life."""
        self.world = world

    # --- what the handlers call -------------------------------------------------------------

    async def task_seen(self, task: Task) -> None:
        """Any event of a task: make its children once, or recompute its status once after
        a restart. A task's own status writes come back here and cost nothing."""
        if task.deleting:
            return
        if self._is_final(task):
            self._forget_written_once_watched(task)
            await self._acknowledge_generation(task)
            return
        if task.cancel_requested:
            self._cancel(task)
            return
        if task.spec is None:
            self._override(task.uid, invalid_spec(task.spec_error or "unreadable"))
            return
        if (self.world.job(task.uid) is not None or self._created.get(task.uid)
                or self.world.merge_job(task.uid) is not None):
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

    def tasks_ready(self, uids: list[str]) -> None:
        """Tasks seen before their namespace's Jobs and pods were listed (world.Store):
        seen now."""
        for uid in uids:
            self.see(uid)

    def see(self, uid: str) -> None:
        """A task's event: `task_seen` on its latest state, one at a time per task, events
        that arrive meanwhile folded into one more."""
        if uid in self._seeing:
            self._seeing[uid] = True
            return
        self._seeing[uid] = False
        self.spawn(self._see_loop(uid))

    async def _see_loop(self, uid: str) -> None:
        try:
            while True:
                task = self.world.task(uid)
                if task is None:
                    return
                await self.task_seen(task)
                if not self._seeing.get(uid):
                    return
                self._seeing[uid] = False
        finally:
            self._seeing.pop(uid, None)

    def mark(self, uid: str) -> None:
        """Something about this task changed: write its status soon (at once if the run
        ended), folding further changes into the same write."""
        pending = self._pending.get(uid)
        if pending is not None:
            pending.dirty = True
            pending.wake.set()  # the write loop weighs it: it may shorten the hold
            return
        pending = _Pending()
        self._pending[uid] = pending
        self.spawn(self._write_loop(uid, pending))

    async def job_gone(self, uid: str, merge: bool = False) -> None:
        """The task's Job was deleted: by the TTL or with the task (nothing to do), by
        someone mid-run (the task fails), or before any runner started (made again).
        `merge`: a sharded run's merge Job; its shards' Job finished and may go by TTL."""
        self._trim_soon()
        task = self.world.task(uid)
        if task is None or task.deleting or self._is_final(task):
            return
        if merge:
            self._override(uid, job_deleted(task, task.merge_job_name))
            return
        if task.sharded and (self.world.merge_job(uid) is not None
                             or (self._status(task).get("shards") or {}).get("merge")):
            self.mark(uid)  # every shard had answered: the merge goes on without it
            return
        self._created.pop(uid)
        if task.cancel_requested:
            self._cancel(task)  # being written: a Job gone now is ours, stopped on purpose
            return
        if self._status(task).get("startTime"):
            self._override(uid, job_deleted(task))
        else:
            await self.create_children(task)

    def pod_gone(self, uid: str) -> None:
        self._trim_soon()
        self.mark(uid)

    def set_progress(self, uid: str, fields: dict[str, Any]) -> None:
        """Status fields from progress.json (benchmark_status.progress_fields); written
        only when one of them changed."""
        task = self.world.task(uid)
        if task is None:
            return
        status = self._status(task)
        if all(status.get(key) == value for key, value in fields.items()):
            return
        self._progress[uid] = fields
        self.mark(uid)

    def forget(self, uid: str) -> None:
        """The task is gone: so is everything remembered about it."""
        for table in (self._overrides, self._progress, self._polls):
            table.pop(uid, None)
        self._drop_lookup(uid)
        self._written.pop(uid)
        self._created.pop(uid)
        handle = self._retry.pop(uid, None)
        if handle is not None:
            handle.cancel()
        self._trim_soon()

    def _trim_soon(self) -> None:
        """Once deletions (of tasks, Jobs or pods) pause, give the memory they freed back
        (memory.py): a sweep of 1,000 tasks deleted otherwise left the operator at its peak
        RSS. Their Jobs and pods go after them (the garbage collector, or the TTL), so their
        deletions count too."""
        if self._trim is not None:
            self._trim.cancel()
        try:
            self._trim = asyncio.get_running_loop().call_later(TRIM_AFTER_SECONDS,
                                                               self.trim_memory)
        except RuntimeError:  # no loop: nothing was running to free
            self._trim = None

    def trim_memory(self) -> None:
        """Shrink every table (the reconciler's, the store's) to what it holds, then trim."""
        for value in (*vars(self).values(), *self.world.tables()):
            table = value.items if isinstance(value, LRU) else value
            if isinstance(table, dict | set):
                memory.compact(table)
        memory.trim()

    def state_sizes(self) -> dict[str, int]:
        """For tests and the bench: the size of every per-task table, found by type, so a
        table added later is counted without being listed here (none may outlive `forget`).
        The lookups shared by a namespace's tasks are not per task (`SHARED_TABLES`)."""
        return {name.lstrip("_"): len(value) for name, value in vars(self).items()
                if isinstance(value, dict | set | LRU) and name not in SHARED_TABLES}

    async def drain(self, timeout: float = 10) -> None:
        """Wait for the scheduled writes and Events (tests; shutdown)."""
        deadline = asyncio.get_running_loop().time() + timeout
        while self._tasks and asyncio.get_running_loop().time() < deadline:
            await asyncio.wait(set(self._tasks), timeout=timeout)
        await self.events.drain(max(0.0, deadline - asyncio.get_running_loop().time()))

    # --- cancel -----------------------------------------------------------------------------

    def _cancel(self, task: Task) -> None:
        """Fail the task as Cancelled (once); the write deletes the Job (`stops_job`)."""
        override = self._overrides.get(task.uid)
        if override is not None and override.reason is Reason.CANCELLED:
            return
        job_existed = (self.world.job(task.uid) is not None or bool(self._created.get(task.uid))
                       or task.uid in self._creating)
        self._override(task.uid, cancelled(task, self._status(task), job_existed))

    def _cancel_requested(self, uid: str) -> bool:
        task = self.world.task(uid)
        return task is not None and task.cancel_requested

    async def _acknowledge_generation(self, task: Task) -> None:
        """A finished task is final; but spec.cancel set on it afterwards bumps its
        generation, and kstatus counts a task whose observedGeneration lags as in progress
        for ever. Record the generation, change nothing else, and say so once."""
        previous = self._status(task)
        observed = previous.get("observedGeneration")
        if not isinstance(observed, int) or observed >= task.generation:
            return
        status = acknowledge_generation(previous, task.generation)
        try:
            await self.api.call(self.api.kube.patch_task_status, task.namespace, task.name,
                                status)
        except Exception as error:
            log.warning("recording generation %d of %s failed: %s", task.generation, task.key,
                        error)
            self._retry_later(task.uid, FAILED_WRITE_RETRY_SECONDS)
            return
        self._written.put(task.uid, status)
        if task.cancel_requested:
            self.events.normal(task, "CancelIgnored",
                               f"spec.cancel was set after the task had finished "
                               f"({previous.get('phase')}, {previous.get('reason')}): "
                               "nothing to stop; its status and results are unchanged.")

    # --- creation ---------------------------------------------------------------------------

    async def create_children(self, task: Task) -> None:
        """Create the ConfigMap and the Job unless they exist."""
        if task.uid in self._creating or task.spec is None or task.location is None:
            return
        self._creating.add(task.uid)
        try:
            if await self._waiting_for_configmap(task):
                return
            await self._create_owned(task, build_configmap(task, build_runner_config(
                task.spec, name=task.name, namespace=task.namespace, uid=task.uid,
                location=task.location, settings=self.settings)))
            if self._cancel_requested(task.uid):
                return  # cancelled meanwhile: never a Job
            await self._create_owned(task, build_job(task, task.spec, self.settings))
            self._created.put(task.uid, True)
            if self._cancel_requested(task.uid):
                # Cancelled while the Job was being created: the cancel's write may have
                # found no Job to delete.
                await self.api.call(self.api.kube.delete_job, task.namespace, task.job_name)
                return
            override = self._overrides.get(task.uid)
            if override is not None and not override.phase.terminal:
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

    async def _waiting_for_configmap(self, task: Task) -> bool:
        """A dataset ConfigMap (or its key) is missing: the kubelet would only say so in a
        FailedMount event while the pod holds its GPU, so look before making the Job. The
        task waits for it (no Job, nothing held) for the start failure grace period, counted
        from the task's creation, then fails."""
        assert task.spec is not None
        for ref in references.references(task.spec):
            if ref.kind is not references.Kind.CONFIG_MAP:
                continue
            try:
                keys = await self.api.call(self.api.kube.configmap_keys, task.namespace, ref.name)
            except ApiError as error:
                if error.status == 403:  # an older chart's RBAC: the pod will tell
                    log.warning("cannot read ConfigMap %s for %s (RBAC): %s", ref.name,
                                task.key, api_message(error))
                    return False
                raise
            missing = references.from_configmap(ref, keys, task.namespace)
            if missing is None:
                continue
            ctx = task_context(task, self.settings)
            since = _parse_time(task.created)
            assessment = missing_reference(missing, ctx, since, self.clock(), scheduled=None)
            self._override(task.uid, assessment)
            if not assessment.phase.terminal:
                grace = grace_left_since(since, ctx, self.clock())
                self._retry_later(task.uid, min(CONFIGMAP_RECHECK_SECONDS, grace + 1))
            return True
        return False

    async def create_merge(self, task: Task) -> None:
        """A sharded run's merge Job, once every shard answered (409: made already)."""
        assert task.spec is not None
        try:
            await self._create_owned(task, build_merge_job(task, task.spec, self.settings))
        except RejectedSpecError as error:
            self._override(task.uid, invalid_spec(str(error)))
        except Exception as error:  # the next status write tries again
            log.warning("creating the merge Job of %s failed: %s", task.key, error)
            asyncio.get_running_loop().call_later(FAILED_WRITE_RETRY_SECONDS, self.mark,
                                                  task.uid)

    async def _create_owned(self, task: Task, manifest: dict[str, Any]) -> None:
        """Create a child. An existing one is ours (a restart) unless it belongs to an older
        task of the same name."""
        try:
            if await self._post(manifest):
                return
            meta = manifest["metadata"]
            owner = await self.api.call(self.api.kube.owner_uid, manifest["kind"],
                                        meta["namespace"], meta["name"])
        except ApiError as error:
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
                self.spawn(self.task_seen(task))

        self._retry[uid] = asyncio.get_running_loop().call_later(delay, again)

    # --- status -----------------------------------------------------------------------------

    def _status(self, task: Task) -> dict[str, Any]:
        """The newest status known: the one written last, else the one watched."""
        return self._written.get(task.uid) or dict(task.status)

    def _forget_written_once_watched(self, task: Task) -> None:
        """A final status the watch has delivered back need not be remembered as well (a
        status copy per finished task, kept until the task is deleted)."""
        written = self._written.get(task.uid)
        if written is None or not task.finished:
            return
        watched = task.status
        observed, seen = written.get("observedGeneration"), watched.get("observedGeneration")
        if ((watched.get("phase"), watched.get("reason")) == (written.get("phase"),
                                                             written.get("reason"))
                and isinstance(seen, int) and (not isinstance(observed, int) or seen >= observed)):
            self._written.pop(task.uid)

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
        if task.sharded:
            return assess_sharded(job, self.world.pods(task.uid),
                                  self.world.merge_job(task.uid),
                                  self.world.merge_pods(task.uid),
                                  task_context(task, self.settings), task.merge_job_name,
                                  self._status(task), now=self.clock())
        if job is None:
            return None  # its Job event follows: nothing new to say before
        return assess(job, self.world.pods(task.uid),
                      task_context(task, self.settings, self._lookups.get(task.uid)),
                      now=self.clock())

    def _hold(self, uid: str, waited: float) -> float:
        """Seconds to hold this task's status change before writing it (status_writes.py).
        Never waits on the API: a lookup (`_look_up`) is made by the write itself."""
        task = self.world.task(uid)
        if task is None or task.deleting or self._is_final(task):
            return 0.0
        assessment = self._assess(task)
        return hold_seconds(assessment.reason if assessment else None,
                            reason_of(self._status(task).get("reason")), waited,
                            debounce=self.settings.status_debounce_ms / 1000,
                            settle=self.settings.status_settle_ms / 1000,
                            creating=self._creating_children(),
                            burst=self.settings.status_burst_hold_ms / 1000)

    def _creating_children(self) -> bool:
        """A child POST in flight, or one ended within BUSY_RECHECK_SECONDS: a sweep."""
        since = asyncio.get_running_loop().time() - self._last_created
        return self._creates_in_flight > 0 or since < BUSY_RECHECK_SECONDS

    async def _post(self, manifest: dict[str, Any]) -> bool:
        """Create an object (False: it exists), counted for `_creating_children`."""
        self._creates_in_flight += 1
        try:
            return bool(await self.api.call(self.api.kube.create, manifest))
        finally:
            self._creates_in_flight -= 1
            self._last_created = asyncio.get_running_loop().time()
            if self._sweep_check is None:
                self._sweep_check = asyncio.get_running_loop().call_later(
                    BUSY_RECHECK_SECONDS, self._sweep_paused)

    def _sweep_paused(self) -> None:
        """Once creating has paused, every status change held for it is weighed again (once,
        not every second per task while the sweep lasts)."""
        loop = asyncio.get_running_loop()
        if self._creating_children():
            # A create in flight: ask again a pause's length later (its end moves the pause).
            wait = BUSY_RECHECK_SECONDS - (0 if self._creates_in_flight
                                           else loop.time() - self._last_created)
            self._sweep_check = loop.call_later(max(wait, 0.05), self._sweep_paused)
            return
        self._sweep_check = None
        for pending in self._pending.values():
            pending.wake.set()

    def spawn(self, work: Any) -> None:
        """Run `work` in the background, awaited by `drain`."""
        job: asyncio.Task[None] = asyncio.get_running_loop().create_task(work)
        self._tasks.add(job)
        job.add_done_callback(self._tasks.discard)

    async def _write_loop(self, uid: str, pending: _Pending) -> None:
        loop = asyncio.get_running_loop()
        since = loop.time()  # the first change not yet written
        try:
            while pending.dirty:
                while (hold := self._hold(uid, loop.time() - since)) > 0:
                    pending.wake.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(pending.wake.wait(), hold)
                pending.dirty = False
                pending.wake.clear()
                try:
                    await self.write_status(uid)
                except Exception as error:
                    log.warning("writing the status of task %s failed: %s", uid, error)
                    asyncio.get_running_loop().call_later(FAILED_WRITE_RETRY_SECONDS,
                                                          self.mark, uid)
                since = loop.time()
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
        if await self._look_up(task):
            assessment = self._assess(task) or assessment
        previous = self._status(task)
        scores = None
        if assessment.start_merge:
            await self.create_merge(task)
        if assessment.reason is Reason.SUCCEEDED:
            assessment, scores = await self._scores(task, assessment)
        status = render_status(
            previous, assessment, generation=task.generation, now=now_iso(),
            job_name="" if assessment.reason is Reason.INVALID_SPEC else task.job_name,
            configmap_name="" if assessment.reason is Reason.INVALID_SPEC
            else task.configmap_name,
            results=_results_field(task), scores=scores,
            gates=task.spec.gates if task.spec else ())
        progress = self._progress.pop(uid, None)
        if progress and not assessment.phase.terminal:
            status.update(progress)
        self._recheck(uid, assessment)
        self._schedule_polls(uid, assessment.reason)
        if status == previous:
            return previous
        await self.api.call(self.api.kube.patch_task_status, task.namespace, task.name, status)
        if self.world.task(uid) is None:
            return status  # deleted while the write was in flight: `forget` ran, keep nothing
        self._written.put(uid, status)
        if assessment.phase.terminal:
            self._overrides.pop(uid, None)
            self._drop_lookup(uid)
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

    # --- lookups: why a Job has no pod, whether its LocalQueue exists ----------------------

    def _drop_lookup(self, uid: str) -> None:
        lookup = self._lookups.pop(uid, None)
        if lookup is not None and lookup.timer is not None:
            lookup.timer.cancel()

    async def _look_up(self, task: Task) -> bool:
        """While a task's Job has no pod, read the Job's FailedCreate events (a missing
        PriorityClass is refused by admission: only the Job controller's event says so);
        while it is queued, check that its LocalQueue exists. True if something was read.
        Nothing is read for a task past these states."""
        job = self.world.job(task.uid)
        spec = task.spec
        suspended = bool(job and (job.get("spec") or {}).get("suspend"))
        queue = spec.scheduling.queue_name if spec else ""
        wants_events = job is not None and not suspended and not self.world.pods(task.uid)
        wants_queue = suspended and bool(queue)
        if not (wants_events or wants_queue):
            self._drop_lookup(task.uid)
            return False
        loop = asyncio.get_running_loop()
        lookup = self._lookups.get(task.uid)
        if lookup is None:
            lookup = self._lookups[task.uid] = _Lookup(due=loop.time() + FIRST_LOOKUP_SECONDS)
        if loop.time() < lookup.due:
            self._look_again(task.uid, lookup, lookup.due - loop.time())
            return False
        assert job is not None
        try:
            if wants_events:
                lookup.missing_queue = None
                found = (await self._failed_creates_in(task.namespace)).get(
                    str(job["metadata"].get("uid") or ""))
                lookup.failed_create = found.message if found else ""
                lookup.failed_create_since = found.since if found else None
                interval = EVENTS_LOOKUP_SECONDS
            else:
                lookup.failed_create, lookup.failed_create_since = "", None
                lookup.missing_queue = await self._queue_missing(task, queue)
                interval = QUEUE_LOOKUP_SECONDS
        except Exception as error:  # informational: the status stays as it was
            log.warning("looking up why %s is not running failed: %s", task.key, error)
            interval = EVENTS_LOOKUP_SECONDS
        lookup.due = loop.time() + interval
        self._look_again(task.uid, lookup, interval)
        return True

    def _look_again(self, uid: str, lookup: _Lookup, delay: float) -> None:
        if lookup.timer is not None:
            return

        def again() -> None:
            lookup.timer = None
            self.mark(uid)

        lookup.timer = asyncio.get_running_loop().call_later(delay, again)

    async def _failed_creates_in(self, namespace: str) -> dict[str, FailedCreate]:
        """One list of the namespace's FailedCreate events every EVENTS_LOOKUP_SECONDS, shared
        by its tasks, in flight included: 5,000 tasks waiting for pods in one namespace made
        5,286 lists in 25 minutes when each stale reader sent its own."""
        loop = asyncio.get_running_loop()
        cached = self._failed_creates.get(namespace)
        if cached is not None and loop.time() - cached[0] < EVENTS_LOOKUP_SECONDS:
            return cached[1]
        reading = self._failed_creates_reading.get(namespace)
        if reading is None:
            reading = loop.create_task(self.api.call(self.api.kube.failed_creates, namespace))
            self._failed_creates_reading[namespace] = reading
            try:
                found = await asyncio.shield(reading)
            finally:
                self._failed_creates_reading.pop(namespace, None)
            self._failed_creates.put(namespace, (loop.time(), found))
            return found
        return await asyncio.shield(reading)

    async def _queue_missing(self, task: Task, queue: str) -> references.Missing | None:
        loop = asyncio.get_running_loop()
        key = (task.namespace, queue)
        cached = self._queues.get(key)
        if cached is None or loop.time() - cached[0] >= QUEUE_LOOKUP_SECONDS:
            cached = (loop.time(), await self.api.call(self.api.kube.local_queue,
                                                       task.namespace, queue))
            self._queues.put(key, cached)
        if cached[1] is Found.UNKNOWN:
            log.warning("cannot read LocalQueue %s for %s (RBAC)", queue, task.key)
        if cached[1] not in (Found.NO, Found.NO_API):
            return None
        assert task.spec is not None
        ref = next(r for r in references.references(task.spec)
                   if r.kind is references.Kind.LOCAL_QUEUE)
        return references.Missing(ref, task.namespace, no_api=cached[1] is Found.NO_API)

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
            post = self.events.warning if reason.warning else self.events.normal
            post(task, reason.value, status["message"])
        if assessment.phase is Phase.FAILED:
            metrics.record_failure(task.namespace, reason.value)
        if reason.stops_job:
            await self.api.call(self.api.kube.delete_job, task.namespace, task.job_name)
            if self.world.merge_job(task.uid) is not None:  # a sharded run, merging
                await self.api.call(self.api.kube.delete_job, task.namespace,
                                    task.merge_job_name)
        if assessment.phase is Phase.COMPLETED:
            metrics.record_scores(task.namespace, task.name, status)
        if assessment.phase is Phase.COMPLETED and status.get("gates"):
            passed = all(g["passed"] for g in status["gates"])
            message = condition_of(status, PASSED_CONDITION).get("message", "")
            post = self.events.normal if passed else self.events.warning
            post(task, (GateReason.PASSED if passed else GateReason.FAILED).value, message)
            metrics.record_gates(task.namespace, task.name, passed)

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
                self.spawn(self._poll(uid))

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
        keys = ([f"{SHARDS_DIRECTORY}/{i}/progress.json" for i in range(task.spec.parallelism)]
                if task.spec is not None and task.sharded else ["progress.json"])
        try:
            parts = []
            for key in keys:
                data = await self.api.call(read_capped, self.s3(),
                                           ResultsLocation.from_uri(uri), key,
                                           runner_output.MAX_PROGRESS_BYTES)
                if data is None:
                    return  # a shard that has not started: no total to show yet
                parts.append(runner_output.parse_progress(data))
            # A sharded run shows the sum of its shards (per-benchmark states: one pod only).
            value = progress_fields(parts[0] if len(parts) == 1 else runner_output.Progress(
                sum(p.done for p in parts), sum(p.total for p in parts)))
        except Exception as error:
            # Progress is informational: a bad progress.json is not shown, and the run goes on.
            log.warning("progress.json of %s not shown: %s", task.key, error)
            return
        self.set_progress(task.uid, value)


def _parse_time(value: str | None) -> datetime.datetime | None:
    if not value:
        return None
    try:
        return datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


def due_polls(polls: dict[str, float], now: float, budget: int) -> list[str]:
    """The `budget` most overdue of the tasks due by `now`."""
    return heapq.nsmallest(budget, (uid for uid, due in polls.items() if due <= now),
                           key=polls.__getitem__)


def _results_field(task: Task) -> dict[str, str]:
    if task.location is None:
        return dict(task.status.get("results") or {})
    return {"uri": task.location.uri, "bundle": task.location.bundle_uri,
            "log": task.location.log_uri}
