"""From the Job and its pods to the task's status: phase, conditions, message.

Pure functions. `assess` reads what Kubernetes reports and decides what is going on (a chain
of small rules, the first that applies wins); `render_status` turns that into the status
object, keeping condition transition times stable so that tools (kstatus, Argo CD,
`kubectl wait`) see real transitions only.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from typing import Any

from evaluation_operator import references
from evaluation_operator.benchmark_status import final_benchmarks, stopped_benchmarks
from evaluation_operator.gates import CONDITION as PASSED_CONDITION
from evaluation_operator.gates import ScoreTable, evaluate, passed_condition
from evaluation_operator.manifests import EXIT_CONFIGURATION_ERROR, RUNNER_CONTAINER
from evaluation_operator.references import Missing, Policy, Reference
from evaluation_operator.runner_output import (
    InvalidRunnerOutput,
    RunnerFailed,
    RunnerSucceeded,
    TerminationMessage,
    failure_report,
    parse_termination_message,
)
from evaluation_operator.spec import Gate
from evaluation_operator.states import Phase, Reason

IMAGE_PULL_REASONS = ("ErrImagePull", "ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull")
CONFIG_REASONS = ("CreateContainerConfigError", "CreateContainerError")
CONDITION_TYPES = ("Ready", "Reconciling", "Stalled", "Scheduled", "Running", "Succeeded",
                   "Failed", "Passed")


@dataclass(frozen=True)
class TaskContext:
    """What the messages need to know about the task."""

    job_name: str
    timeout: str
    retries: int
    gpus: int
    gpu_resource: str
    memory: str
    queue_name: str = ""
    # How long an image pull or container config error may last before the task fails.
    start_failure_grace_seconds: int = 0
    namespace: str = ""
    references: tuple[Reference, ...] = ()
    # What the reconciler looked up (reconcile.py): the Job controller's latest FailedCreate
    # event and since when it has failed; a LocalQueue that is not there.
    failed_create: str = ""
    failed_create_since: datetime.datetime | None = None
    missing_queue: Missing | None = None
    # spec.parallelism: the Job is an Indexed Job of this many pods (sharded.py).
    shards: int = 1


@dataclass
class Assessment:
    reason: Reason
    message: str
    scheduled: bool | None = None  # None: not known yet
    scheduled_reason: str = ""
    running: bool = False
    start_time: str | None = None
    completion_time: str | None = None
    runner_summary: TerminationMessage | None = None
    # Look again this many seconds on even if nothing changes (a grace period ends).
    recheck_seconds: int | None = None
    # A sharded run: status.shards, and whether its merge Job is to be created now.
    shards: dict[str, Any] | None = None
    start_merge: bool = False

    @property
    def phase(self) -> Phase:
        return self.reason.phase


def _conditions(obj: dict[str, Any] | None) -> dict[str, dict[str, Any]]:
    status = (obj or {}).get("status") or {}
    return {c["type"]: c for c in status.get("conditions") or [] if c.get("status") == "True"}


def _runner_status(pod: dict[str, Any]) -> dict[str, Any]:
    for status in (pod.get("status") or {}).get("containerStatuses") or []:
        if status.get("name") == RUNNER_CONTAINER:
            return dict(status)
    statuses = (pod.get("status") or {}).get("containerStatuses") or []
    return dict(statuses[0]) if statuses else {}


def _terminated(pod: dict[str, Any]) -> dict[str, Any] | None:
    status = _runner_status(pod)
    state = (status.get("state") or {}).get("terminated") or (
        (status.get("lastState") or {}).get("terminated"))
    return dict(state) if state else None


def _timestamp(value: Any) -> str | None:
    """RFC 3339 with a Z, whatever form the client returned."""
    if not value:
        return None
    text = str(value).replace("+00:00", "Z")
    return text if "T" in text else text.replace(" ", "T")


def _created(pod: dict[str, Any]) -> str:
    return str(pod.get("metadata", {}).get("creationTimestamp") or "")


def _being_deleted(pod: dict[str, Any]) -> bool:
    return bool((pod.get("metadata") or {}).get("deletionTimestamp"))


def _pod_phase(pod: dict[str, Any]) -> str:
    return str((pod.get("status") or {}).get("phase") or "")


def _failure_detail(pod: dict[str, Any] | None) -> tuple[int | None, str, RunnerFailed | None]:
    """Exit code, kubelet reason and the runner's own account of a failed pod."""
    if pod is None:
        return None, "", None
    terminated = _terminated(pod) or {}
    code = terminated.get("exitCode")
    summary = failure_report(terminated.get("message"))
    return (int(code) if code is not None else None), str(terminated.get("reason") or ""), summary


def _runner_message(summary: TerminationMessage | None) -> str:
    return summary.message if isinstance(summary, RunnerFailed) else ""


def has_scores(message: TerminationMessage | None) -> bool:
    """The runner's message holds the full scores (not truncated)."""
    return isinstance(message, RunnerSucceeded) and message.scores is not None


def invalid_runner_output(error: InvalidRunnerOutput, start_time: str | None = None,
                          completion_time: str | None = None) -> Assessment:
    return Assessment(
        Reason.INVALID_RUNNER_OUTPUT,
        f"The runner's output breaks the runner contract, so its scores cannot be trusted: "
        f"{error}. Check the runner image (spec.framework.image, or the operator's default) "
        "against docs/runner-contract.md, then create a new task.",
        scheduled=True, start_time=start_time, completion_time=completion_time)


# What to check for each failure reason the runner reports (runner contract, section 3).
RUNNER_REASON_HINTS = {
    "ModelUnreachable": "Check that the model server at spec.model.endpoint.url is up and "
                        "reachable from this namespace (NetworkPolicies included).",
    "DatasetUnreachable": "Check that the dataset URL in spec.benchmarks[].dataset.uri is "
                          "reachable from this namespace.",
    "UploadFailed": "Check the S3 endpoint, the bucket and the credentials Secret "
                    "(spec.output.s3.credentialsSecretRef).",
}


def _parse_time(value: Any) -> datetime.datetime | None:
    if not value:
        return None
    try:
        parsed = datetime.datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=datetime.UTC)


def _waiting_since(pod: dict[str, Any]) -> datetime.datetime | None:
    """When the pod got a node (a pod that waited long for a GPU must not lose its grace)."""
    for condition in (pod.get("status") or {}).get("conditions") or []:
        if condition.get("type") == "PodScheduled" and condition.get("status") == "True":
            scheduled = _parse_time(condition.get("lastTransitionTime"))
            if scheduled:
                return scheduled
    return _parse_time((pod.get("status") or {}).get("startTime")) or _parse_time(
        (pod.get("metadata") or {}).get("creationTimestamp"))


def grace_left_since(since: datetime.datetime | None, ctx: TaskContext,
                     now: datetime.datetime | None) -> int:
    """Seconds left of the start failure grace period counted from `since`."""
    if ctx.start_failure_grace_seconds <= 0 or now is None:
        return 0
    if since is None:
        return ctx.start_failure_grace_seconds
    return max(0, ctx.start_failure_grace_seconds - int((now - since).total_seconds()))


def _grace_left(pod: dict[str, Any], ctx: TaskContext, now: datetime.datetime | None) -> int:
    """Seconds left before a start failure (image pull, missing Secret) fails the task."""
    return grace_left_since(_waiting_since(pod), ctx, now)


def missing_reference(missing: Missing, ctx: TaskContext, since: datetime.datetime | None,
                      now: datetime.datetime | None, *, scheduled: bool | None,
                      first_run: str | None = None) -> Assessment:
    """A Secret, ConfigMap, PVC, PriorityClass or LocalQueue the spec names is missing: say
    which field names it, and either wait for it or, once the grace period counted from
    `since` is over, fail. The message names the moment it fails (not a countdown), so it
    stays the same, and is written once, however often it is recomputed."""
    what, fix = missing.what(), missing.fix()
    grace_left = grace_left_since(since, ctx, now)
    if missing.policy is Policy.WAIT:
        if missing.no_api:
            return Assessment(Reason.MISSING_REFERENCE, f"{what}. {fix}. Until then the Job "
                              "stays suspended and holds no resources.", scheduled=False,
                              scheduled_reason=Reason.MISSING_REFERENCE.value)
        if missing.reference.kind is references.Kind.LOCAL_QUEUE:
            then = ("Kueue admits the Job once it exists; until then the Job stays suspended "
                    "and holds no resources")
        else:
            then = ("the run starts once it exists, and fails if it has not finished within "
                    f"spec.timeout ({ctx.timeout})")
        return Assessment(Reason.MISSING_REFERENCE, f"{what}. {fix}: {then}.",
                          scheduled=False, scheduled_reason=Reason.MISSING_REFERENCE.value,
                          start_time=first_run)
    if grace_left:
        grace = ctx.start_failure_grace_seconds
        when = (f"at {since + datetime.timedelta(seconds=grace):%Y-%m-%dT%H:%M:%SZ}"
                if since else f"{grace}s after it was first seen missing")
        return Assessment(
            Reason.MISSING_REFERENCE,
            f"{what}. {fix}: the task fails if it is still missing {when}.",
            scheduled=scheduled, start_time=first_run, recheck_seconds=grace_left)
    return Assessment(Reason.REFERENCE_NOT_FOUND, f"{what}. {fix}, then create a new task.",
                      scheduled=scheduled)


# --- assess: one small rule per situation, the first that applies wins --------------------


@dataclass(frozen=True)
class Observed:
    """The Job and its pods, sorted out once for the rules below."""

    job: dict[str, Any]
    conditions: dict[str, dict[str, Any]]
    pods: list[dict[str, Any]]  # oldest first
    failed_pods: list[dict[str, Any]]
    first_run: str | None  # when a runner first started
    ctx: TaskContext
    now: datetime.datetime | None

    @classmethod
    def of(cls, job: dict[str, Any], pods: list[dict[str, Any]], ctx: TaskContext,
           now: datetime.datetime | None) -> Observed:
        pods = sorted(pods, key=_created)
        ran = [p for p in pods if _pod_phase(p) in ("Running", "Succeeded", "Failed")
               and (p.get("status") or {}).get("startTime")]
        first = _timestamp(min((str(p["status"]["startTime"]) for p in ran), default=None))
        return cls(job=job, conditions=_conditions(job), pods=pods,
                   failed_pods=[p for p in pods if _pod_phase(p) == "Failed"], first_run=first,
                   ctx=ctx, now=now)

    @property
    def current(self) -> dict[str, Any] | None:
        return self.pods[-1] if self.pods else None

    @property
    def last_failure(self) -> dict[str, Any] | None:
        """The last pod that failed on its own: when one shard's exit fails the Job, the Job
        controller stops the others (they fail too, being deleted, with no message)."""
        own = [p for p in self.failed_pods if not _being_deleted(p)] or self.failed_pods
        return own[-1] if own else None

    @property
    def job_status(self) -> dict[str, Any]:
        return dict(self.job.get("status") or {})

    @property
    def retry_note(self) -> str:
        if not self.failed_pods:
            return ""
        code, kubelet_reason, summary = _failure_detail(self.last_failure)
        what = _runner_message(summary) or f"exit code {code} {kubelet_reason}".strip()
        if self.ctx.shards > 1:
            return (f" {len(self.failed_pods)} shard attempt(s) failed (each shard is retried "
                    f"up to {self.ctx.retries} time(s)); the last: {what}.")
        return (f" Attempt {len(self.failed_pods) + 1} of {self.ctx.retries + 1}; the previous "
                f"one failed: {what}.")


def assess(job: dict[str, Any] | None, pods: list[dict[str, Any]], ctx: TaskContext,
           now: datetime.datetime | None = None) -> Assessment:
    """What is going on, from the Job and its pods. `now` only times start failures."""
    if job is None:
        return Assessment(Reason.JOB_PENDING, "Creating the evaluation Job.")
    seen = Observed.of(job, pods, ctx, now)
    for rule in _RULES:
        found = rule(seen)
        if found is not None:
            return found
    raise AssertionError("the last rule always decides")  # pragma: no cover


def _succeeded(seen: Observed) -> Assessment | None:
    """The Job says Complete, or its pod succeeded: a real kubelet reports the pod seconds
    before the Job controller catches up, and the runner exits 0 only after uploading its
    results (scores come from the message, else from summary.json)."""
    pod = next((p for p in reversed(seen.pods) if _pod_phase(p) == "Succeeded"), None)
    terminated = (_terminated(pod) if pod else None) or {}
    job_done = "Complete" in seen.conditions or "SuccessCriteriaMet" in seen.conditions
    if seen.ctx.shards > 1:
        # One shard's pod is not the run; its message holds no scores (the merge's does).
        if not job_done:
            return None
        pod, terminated = None, {}
    if not job_done and pod is None:
        return None
    if pod is None and any(_pod_phase(p) not in ("Succeeded", "Failed") for p in seen.pods):
        # The Job saw its pod succeed before the pod watch told us: that event, with the
        # runner's termination message, follows. Deciding now would read the scores from S3
        # (CollectingResults: a Warning, one more status write and Event per task).
        return None
    completion = _timestamp(seen.job_status.get("completionTime") or terminated.get("finishedAt"))
    start = seen.first_run or _timestamp(seen.job_status.get("startTime"))
    try:
        summary = (parse_termination_message(terminated.get("message")) if pod is not None
                   else None)
    except InvalidRunnerOutput as error:
        return invalid_runner_output(error, start, completion)
    return Assessment(
        Reason.SUCCEEDED, "Evaluation finished; scores are in status.",
        scheduled=True, start_time=start, completion_time=completion, runner_summary=summary,
    )


def _job_failed(seen: Observed) -> Assessment | None:
    failure = seen.conditions.get("Failed") or seen.conditions.get("FailureTarget")
    if not failure or _pod_watch_behind(seen):
        return None
    last_failed = seen.last_failure or seen.current
    code, kubelet_reason, summary = _failure_detail(last_failed)
    reason, message = _failure_reason(seen, str(failure.get("reason") or ""), code,
                                      kubelet_reason, summary, failure)
    completion = (_timestamp(failure.get("lastTransitionTime")) if "Failed" in seen.conditions
                  else None)
    return Assessment(reason, " ".join(message.split()), scheduled=bool(seen.first_run),
                      start_time=seen.first_run, completion_time=completion,
                      runner_summary=summary)


def _pod_watch_behind(seen: Observed) -> bool:
    """The Job failed on a pod exit that the pod watch has not delivered yet: a pod we hold
    has not ended (pending or running) and nothing is stopping it. That pod's event, with the
    runner's termination message, follows (pod events arrive in order, before any the Job's
    failure causes). The same lag is why `_succeeded` waits for a pod it still sees running."""
    return any(_pod_phase(p) not in ("Succeeded", "Failed") and not _being_deleted(p)
               for p in seen.pods)


def _failure_reason(seen: Observed, job_reason: str, code: int | None, kubelet_reason: str,
                    summary: RunnerFailed | None, failure: dict[str, Any]
                    ) -> tuple[Reason, str]:
    ctx = seen.ctx
    if job_reason == "DeadlineExceeded":
        return Reason.DEADLINE_EXCEEDED, (
            f"The run exceeded spec.timeout ({ctx.timeout}) and was stopped. Raise "
            "spec.timeout, lower benchmarks[].limit, or raise parameters.concurrency, "
            "then create a new task.")
    if code == EXIT_CONFIGURATION_ERROR or job_reason == "PodFailurePolicy":
        detail = _runner_message(summary) or "see the runner's log"
        return Reason.CONFIGURATION_ERROR, (
            f"Runner configuration error: {detail}. Retrying cannot help: fix the spec "
            "and create a new task.")
    if kubelet_reason == "OOMKilled":
        return Reason.OOM_KILLED, (
            f"The runner ran out of memory (OOMKilled) and retries are exhausted "
            f"({len(seen.failed_pods)} attempt(s)). Raise spec.resources.memory (now "
            f"{ctx.memory}) or lower parameters.concurrency.")
    detail = _runner_message(summary) or (
        f"exit code {code}" + (f" ({kubelet_reason})" if kubelet_reason else "")
        if code is not None else str(failure.get("message") or "no detail"))
    runner_reason = summary.reason if isinstance(summary, RunnerFailed) else None
    hint = RUNNER_REASON_HINTS.get(runner_reason or "", "")
    logs = (f"See `kubectl logs job/{ctx.job_name}`, or the runner's log in S3 at "
            "status.results.log (kept after the Job and its pods are gone).")
    if ctx.shards > 1 and job_reason in _INDEX_FAILURES:
        failed = seen.job_status.get("failedIndexes") or "?"
        return (Reason.RETRIES_EXHAUSTED if ctx.retries > 0 else Reason.RUNNER_FAILED), (
            f"Shard(s) {failed} of {ctx.shards} failed {len(seen.failed_pods)} time(s) in all "
            f"and exhausted their retries (spec.retries={ctx.retries} per shard); the run "
            f"cannot complete without them. Last failure: {detail}. {hint} {logs}")
    if job_reason == "BackoffLimitExceeded" and ctx.retries > 0:
        return Reason.RETRIES_EXHAUSTED, (
            f"The runner failed {len(seen.failed_pods)} time(s) and retries are exhausted "
            f"(spec.retries={ctx.retries}); last failure: {detail}. {hint} {logs}")
    retry = " (spec.retries=0: no retry)" if ctx.retries == 0 else ""
    other = f" (Job: {job_reason})" if job_reason not in ("", "BackoffLimitExceeded") else ""
    return Reason.RUNNER_FAILED, f"The runner failed{retry}{other}: {detail}. {hint} {logs}"


# Why an Indexed Job fails when an index ran out of its backoffLimitPerIndex.
_INDEX_FAILURES = ("FailedIndexes", "MaxFailedIndexesExceeded", "BackoffLimitExceeded")


def _queued(seen: Observed) -> Assessment | None:
    if not (seen.job.get("spec") or {}).get("suspend"):
        return None
    if seen.ctx.missing_queue is not None:
        return missing_reference(seen.ctx.missing_queue, seen.ctx, None, seen.now,
                                 scheduled=False)
    queue = f" in queue {seen.ctx.queue_name}" if seen.ctx.queue_name else ""
    return Assessment(Reason.QUEUED, f"Waiting for Kueue to admit the Job{queue}.",
                      scheduled=False, scheduled_reason="Queued")


def _no_pod(seen: Observed) -> Assessment | None:
    """No pod yet, or the last one failed and the Job controller has not replaced it yet."""
    current = seen.current
    if current is not None and _pod_phase(current) != "Failed":
        return None
    ctx = seen.ctx
    if ctx.failed_create:
        missing = references.from_failed_create(ctx.failed_create, ctx.references, ctx.namespace)
        if missing is not None:
            return missing_reference(missing, ctx, ctx.failed_create_since, seen.now,
                                     scheduled=False, first_run=seen.first_run)
        return Assessment(Reason.POD_PENDING, "Kubernetes refuses to create the runner pod: "
                          f"{ctx.failed_create}." + seen.retry_note, start_time=seen.first_run)
    return Assessment(Reason.POD_PENDING, "Waiting for the Job controller to create the "
                      "runner pod." + seen.retry_note, start_time=seen.first_run)


def _unschedulable(seen: Observed) -> Assessment | None:
    current = seen.current or {}
    for condition in (current.get("status") or {}).get("conditions") or []:
        if condition.get("type") == "PodScheduled" and condition.get("status") == "False":
            ctx = seen.ctx
            missing = references.from_scheduler_message(
                str(condition.get("message") or ""), ctx.references, ctx.namespace)
            if missing is not None:
                return missing_reference(missing, ctx, None, seen.now, scheduled=False,
                                         first_run=seen.first_run)
            what = _scheduling_wait(str(condition.get("message") or ""), ctx)
            return Assessment(
                Reason.UNSCHEDULABLE,
                f"Waiting for {what}: {condition.get('message') or condition.get('reason')}. "
                f"The run starts when capacity frees up and fails if it has not finished "
                f"within spec.timeout ({ctx.timeout})." + seen.retry_note,
                scheduled=False, scheduled_reason=str(condition.get("reason") or "Unschedulable"),
                start_time=seen.first_run,
            )
    return None


def _scheduling_wait(scheduler_message: str, ctx: TaskContext) -> str:
    claims = references.unbound_claims(scheduler_message, ctx.references)
    if claims:
        named = ", ".join(f'PersistentVolumeClaim "{c.name}" ({c.field})' for c in claims)
        return (f"a volume for {named} (check `kubectl describe pvc -n {ctx.namespace}`: "
                "its StorageClass and provisioner, or a PersistentVolume to bind)")
    return (f"{ctx.gpus} free {ctx.gpu_resource}" if ctx.gpus
            else "a node with enough CPU and memory")


def _cannot_start(seen: Observed) -> Assessment | None:
    current = seen.current or {}
    runner = _runner_status(current)
    waiting = (runner.get("state") or {}).get("waiting") or {}
    if str(waiting.get("reason") or "") not in (*IMAGE_PULL_REASONS, *CONFIG_REASONS):
        return None
    grace_left = _grace_left(current, seen.ctx, seen.now)
    if str(waiting.get("reason")) in CONFIG_REASONS:
        missing = references.from_container_config_error(
            str(waiting.get("message") or ""), seen.ctx.references, seen.ctx.namespace)
        if missing is not None:
            return missing_reference(missing, seen.ctx, _waiting_since(current), seen.now,
                                     scheduled=True, first_run=seen.first_run)
    return _start_failure(waiting, runner.get("image"), grace_left, seen.first_run)


def _on_the_way(seen: Observed) -> Assessment:
    current = seen.current or {}
    pod_status = current.get("status") or {}
    node = (current.get("spec") or {}).get("nodeName")
    if pod_status.get("phase") == "Running":
        return Assessment(
            Reason.RUNNING, f"Evaluating on node {node}." + seen.retry_note,
            scheduled=True, running=True,
            start_time=seen.first_run or _timestamp(pod_status.get("startTime")),
        )
    if not node:
        return Assessment(Reason.SCHEDULING, "Waiting for the scheduler." + seen.retry_note,
                          start_time=seen.first_run)
    return Assessment(
        Reason.STARTING, f"Scheduled on node {node}; starting the runner." + seen.retry_note,
        scheduled=True, start_time=seen.first_run,
    )


_RULES = (_succeeded, _job_failed, _queued, _no_pod, _unschedulable,
          _cannot_start, _on_the_way)


def _start_failure(waiting: dict[str, Any], image: str | None, grace_left: int,
                   first_run: str | None) -> Assessment:
    """The runner container cannot start: still Evaluating while the grace period lasts
    (registries and Secrets can recover), then Failed so the Job stops holding a GPU."""
    reason = str(waiting.get("reason") or "")
    yet = " yet" if grace_left else ""
    if reason in IMAGE_PULL_REASONS:
        what = (f"The runner image {image or 'the runner image'} cannot be pulled{yet} "
                f"({reason}: {waiting.get('message', '')}).")
        fix = "spec.framework.image, the operator's runner image and its pull secret"
        pending, failed = Reason.IMAGE_PULL_BACKOFF, Reason.IMAGE_PULL_ERROR
    else:
        what = f"The runner cannot start{yet}: {waiting.get('message', reason)}."
        fix = ("the Secrets named in spec.output.s3.credentialsSecretRef and "
               "spec.model.endpoint.apiKeySecretRef: they must exist in this namespace with "
               "the expected keys")
        pending, failed = Reason.CONTAINER_CONFIG_PENDING, Reason.CONTAINER_CONFIG_ERROR
    if grace_left:
        return Assessment(
            pending, f"{what} The task fails if this lasts {grace_left}s more: check {fix}.",
            scheduled=True, start_time=first_run, recheck_seconds=grace_left)
    return Assessment(failed, f"{what} Check {fix}, then create a new task.", scheduled=True)


def _condition_states(a: Assessment) -> dict[str, tuple[str, str, str]]:
    """type -> (status, reason, message)."""
    states: dict[str, tuple[str, str, str]] = {}
    if a.phase is Phase.COMPLETED:
        states["Ready"] = ("True", "Succeeded", a.message)
        states["Reconciling"] = ("False", "Succeeded", "")
        states["Stalled"] = ("False", "Succeeded", "")
        states["Succeeded"] = ("True", a.reason.value, a.message)
        states["Failed"] = ("False", "Succeeded", "")
        states["Running"] = ("False", "Finished", "")
    elif a.phase is Phase.FAILED:
        states["Ready"] = ("False", a.reason.value, a.message)
        states["Reconciling"] = ("False", a.reason.value, "")
        states["Stalled"] = ("True", a.reason.value, a.message)
        states["Succeeded"] = ("False", a.reason.value, "")
        states["Failed"] = ("True", a.reason.value, a.message)
        states["Running"] = ("False", "Finished", "")
    else:
        states["Ready"] = ("False", a.reason.value, a.message)
        states["Reconciling"] = ("True", a.reason.value, a.message)
        states["Stalled"] = ("False", a.reason.value, "")
        states["Running"] = ("True" if a.running else "False", a.reason.value, "")
    if a.scheduled is not None:
        states["Scheduled"] = (
            "True" if a.scheduled else "False",
            "Scheduled" if a.scheduled else (a.scheduled_reason or a.reason.value),
            "" if a.scheduled else a.message,
        )
    return states


def merge_conditions(
    previous: list[dict[str, Any]], states: dict[str, tuple[str, str, str]],
    generation: int, now: str,
) -> list[dict[str, Any]]:
    """Conditions in a stable order; lastTransitionTime moves only when status changes."""
    by_type = {c["type"]: c for c in previous}
    merged: list[dict[str, Any]] = []
    extra = [t for t in [*by_type, *states] if t not in CONDITION_TYPES]
    for ctype in [*CONDITION_TYPES, *dict.fromkeys(extra)]:
        old = by_type.get(ctype)
        if ctype not in states:
            if old is not None:  # still true of this generation (e.g. Scheduled)
                merged.append({**old, "observedGeneration": generation})
            continue
        status, reason, message = states[ctype]
        transition = old["lastTransitionTime"] if old and old.get("status") == status else now
        merged.append({
            "type": ctype, "status": status, "reason": reason or "Unknown",
            "message": message[:2048], "observedGeneration": generation,
            "lastTransitionTime": transition,
        })
    return merged


def render_status(
    previous: dict[str, Any], a: Assessment, *, generation: int, now: str,
    job_name: str, configmap_name: str, results: dict[str, str],
    scores: dict[str, Any] | None = None, gates: tuple[Gate, ...] = (),
) -> dict[str, Any]:
    """The status object. `gates`: the task's spec.gates, checked once the run completed
    (`status.gates[]` and the `Passed` condition; no such condition without gates).
    `a.shards` (a sharded run) becomes status.shards; the last one known stays."""
    states = _condition_states(a)
    verdicts = (evaluate(gates, ScoreTable.from_status(scores))
                if gates and a.phase is Phase.COMPLETED and scores else None)
    if (passed := passed_condition(a.phase, a.reason, verdicts, len(gates))) is not None:
        states[PASSED_CONDITION] = passed
    status: dict[str, Any] = {
        "phase": a.phase.value,
        "reason": a.reason.value,
        "message": a.message,
        "observedGeneration": generation,
        "jobName": job_name,
        "configMapName": configmap_name,
        "results": results,
        "conditions": merge_conditions(previous.get("conditions") or [],
                                       states, generation, now),
    }
    if verdicts is not None:
        status["gates"] = [v.status_entry() for v in verdicts]
    start = previous.get("startTime") or a.start_time
    if start:
        status["startTime"] = start
    if a.phase.terminal:
        status["completionTime"] = previous.get("completionTime") or a.completion_time or now
    if scores:
        status.update(scores)
        status["benchmarks"] = final_benchmarks(previous.get("benchmarks"),
                                                scores.get("benchmarks") or [])
    elif previous.get("benchmarks"):
        status["benchmarks"] = (stopped_benchmarks(previous["benchmarks"], a.reason)
                                if a.phase.terminal else previous["benchmarks"])
    if previous.get("currentBenchmark") is not None:
        # "" at the end, not absent: a status patch is a merge patch, it never removes a key.
        status["currentBenchmark"] = "" if a.phase.terminal else previous["currentBenchmark"]
    if previous.get("progress"):
        status["progress"] = previous["progress"]
    if a.shards or previous.get("shards"):
        status["shards"] = a.shards or previous["shards"]
    if a.phase is Phase.COMPLETED and scores and (progress := final_progress(scores)):
        status["progress"] = progress
    return status


def condition_of(status: dict[str, Any], kind: str) -> dict[str, Any]:
    for c in status.get("conditions") or []:
        if c.get("type") == kind:
            return dict(c)
    return {}


def acknowledge_generation(previous: dict[str, Any], generation: int) -> dict[str, Any]:
    """A final status, unchanged but for the generation it describes (its own and each
    condition's): kstatus and Argo CD then see the latest spec as observed."""
    return {**previous, "observedGeneration": generation,
            "conditions": [{**c, "observedGeneration": generation}
                           for c in previous.get("conditions") or []]}


def final_progress(scores: dict[str, Any]) -> dict[str, Any] | None:
    """A finished run scored every sample: its progress is complete, even when the run was
    over before the progress poller ever read progress.json. None when no count is known."""
    samples = sum(int(b.get("samples") or 0) for b in scores.get("benchmarks") or [])
    if not samples:
        return None
    return {"samplesDone": samples, "samplesTotal": samples, "text": f"{samples}/{samples}"}
