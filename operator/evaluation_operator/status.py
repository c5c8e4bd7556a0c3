"""From the Job and its pods to the task's status: phase, conditions, message.

Pure functions. `assess` reads what Kubernetes reports and decides what is going on;
`render_status` turns that into the status object, keeping condition transition times stable
so that tools (kstatus, Argo CD, `kubectl wait`) see real transitions only.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from typing import Any

from evaluation_operator.manifests import EXIT_CONFIGURATION_ERROR, RUNNER_CONTAINER
from evaluation_operator.runner_output import (
    InvalidRunnerOutput,
    RunnerFailed,
    TerminationMessage,
    failure_report,
    parse_termination_message,
)

EVALUATING, COMPLETED, FAILED = "Evaluating", "Completed", "Failed"
TERMINAL_PHASES = (COMPLETED, FAILED)
IMAGE_PULL_REASONS = ("ErrImagePull", "ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull")
CONFIG_REASONS = ("CreateContainerConfigError", "CreateContainerError")
# The runner succeeded; its scores are being read (collecting.py).
COLLECTING_RESULTS = "CollectingResults"
# The runner broke its contract (runner_output.py); its scores cannot be trusted.
INVALID_RUNNER_OUTPUT = "InvalidRunnerOutput"
# The runner succeeded but no scores could be read within the results timeout.
RESULTS_UNREADABLE = "ResultsUnreadable"
CONDITION_TYPES = ("Ready", "Reconciling", "Stalled", "Scheduled", "Running", "Succeeded",
                   "Failed")


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


@dataclass
class Assessment:
    phase: str
    reason: str
    message: str
    scheduled: bool | None = None  # None: not known yet
    scheduled_reason: str = ""
    running: bool = False
    start_time: str | None = None
    completion_time: str | None = None
    runner_summary: TerminationMessage | None = None


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


def invalid_runner_output(error: InvalidRunnerOutput, start_time: str | None = None,
                          completion_time: str | None = None) -> Assessment:
    return Assessment(
        FAILED, INVALID_RUNNER_OUTPUT,
        f"The runner's output breaks the runner contract, so its scores cannot be trusted: "
        f"{error}. Check the runner image (spec.framework.image, or the operator's default) "
        "against docs/runner-contract.md, then create a new task.",
        scheduled=True, start_time=start_time, completion_time=completion_time)


# What to check for each failure reason the runner reports (runner contract, section 3).
RUNNER_REASON_HINTS = {
    "ModelUnreachable": "Check that the model server at spec.model.endpoint.url is up and "
                        "reachable from this namespace (NetworkPolicies included).",
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


def _grace_left(pod: dict[str, Any], ctx: TaskContext, now: datetime.datetime | None) -> int:
    """Seconds left before a start failure (image pull, missing Secret) fails the task."""
    if ctx.start_failure_grace_seconds <= 0 or now is None:
        return 0
    since = _waiting_since(pod)
    if since is None:
        return ctx.start_failure_grace_seconds
    return max(0, ctx.start_failure_grace_seconds - int((now - since).total_seconds()))


def assess(job: dict[str, Any] | None, pods: list[dict[str, Any]], ctx: TaskContext,
           now: datetime.datetime | None = None) -> Assessment:
    """`now` is needed only for the grace period of start failures."""
    if job is None:
        return Assessment(EVALUATING, "JobPending", "Creating the evaluation Job.")
    job_status = job.get("status") or {}
    conditions = _conditions(job)
    pods = sorted(pods, key=_created)
    failed_pods = [p for p in pods if (p.get("status") or {}).get("phase") == "Failed"]
    current = pods[-1] if pods else None
    start_time = job_status.get("startTime")
    ran = [p for p in pods if (p.get("status") or {}).get("startTime")
           and (p.get("status") or {}).get("phase") in ("Running", "Succeeded", "Failed")]
    first_run = _timestamp(min((str(p["status"]["startTime"]) for p in ran), default=None))

    if "Complete" in conditions or "SuccessCriteriaMet" in conditions:
        succeeded = next((p for p in reversed(pods)
                          if (p.get("status") or {}).get("phase") == "Succeeded"), None)
        terminated = _terminated(succeeded) if succeeded else None
        completion = job_status.get("completionTime") or (terminated or {}).get("finishedAt")
        try:
            summary = parse_termination_message((terminated or {}).get("message"))
        except InvalidRunnerOutput as error:
            return invalid_runner_output(error, first_run or _timestamp(start_time),
                                         _timestamp(completion))
        return Assessment(
            COMPLETED, "Succeeded", "Evaluation finished; scores are in status.",
            scheduled=True, start_time=first_run or _timestamp(start_time),
            completion_time=_timestamp(completion),
            runner_summary=summary,
        )

    failure = conditions.get("Failed") or conditions.get("FailureTarget")
    if failure:
        last_failed = failed_pods[-1] if failed_pods else current
        code, kubelet_reason, summary = _failure_detail(last_failed)
        completion = _timestamp(failure.get("lastTransitionTime")) if "Failed" in conditions \
            else None
        base = Assessment(FAILED, "", "", scheduled=bool(ran), start_time=first_run,
                          completion_time=completion, runner_summary=summary)
        job_reason = failure.get("reason", "")
        if job_reason == "DeadlineExceeded":
            base.reason = "DeadlineExceeded"
            base.message = (
                f"The run exceeded spec.timeout ({ctx.timeout}) and was stopped. Raise "
                "spec.timeout, lower benchmarks[].limit, or raise parameters.concurrency, "
                "then create a new task."
            )
        elif code == EXIT_CONFIGURATION_ERROR or job_reason == "PodFailurePolicy":
            detail = _runner_message(summary) or "see the runner's log"
            base.reason = "ConfigurationError"
            base.message = (
                f"Runner configuration error: {detail}. Retrying cannot help: fix the spec "
                "and create a new task."
            )
        elif kubelet_reason == "OOMKilled":
            base.reason = "OOMKilled"
            base.message = (
                f"The runner ran out of memory (OOMKilled) and retries are exhausted "
                f"({len(failed_pods)} attempt(s)). Raise spec.resources.memory (now "
                f"{ctx.memory}) or lower parameters.concurrency."
            )
        else:
            detail = _runner_message(summary) or (
                f"exit code {code}" + (f" ({kubelet_reason})" if kubelet_reason else "")
                if code is not None else failure.get("message", "no detail"))
            runner_reason = summary.reason if isinstance(summary, RunnerFailed) else None
            hint = RUNNER_REASON_HINTS.get(runner_reason or "", "")
            logs = f"See `kubectl logs job/{ctx.job_name}`."
            if job_reason == "BackoffLimitExceeded" and ctx.retries > 0:
                base.reason = "RetriesExhausted"
                base.message = (
                    f"The runner failed {len(failed_pods)} time(s) and retries are exhausted "
                    f"(spec.retries={ctx.retries}); last failure: {detail}. {hint} {logs}")
            else:
                base.reason = "RunnerFailed" if job_reason in ("", "BackoffLimitExceeded") \
                    else job_reason
                retry = " (spec.retries=0: no retry)" if ctx.retries == 0 else ""
                base.message = f"The runner failed{retry}: {detail}. {hint} {logs}"
            base.message = " ".join(base.message.split())
        return base

    # The Job is still going: describe the current pod.
    retry_note = ""
    if failed_pods:
        code, kubelet_reason, summary = _failure_detail(failed_pods[-1])
        what = _runner_message(summary) or f"exit code {code} {kubelet_reason}".strip()
        retry_note = (f" Attempt {len(failed_pods) + 1} of {ctx.retries + 1}; the previous one "
                      f"failed: {what}.")
    if job.get("spec", {}).get("suspend"):
        queue = f" in queue {ctx.queue_name}" if ctx.queue_name else ""
        return Assessment(EVALUATING, "Queued",
                          f"Waiting for Kueue to admit the Job{queue}.",
                          scheduled=False, scheduled_reason="Queued")
    if current is None or (current.get("status") or {}).get("phase") in ("Failed", "Succeeded"):
        return Assessment(EVALUATING, "PodPending",
                          "Waiting for the Job controller to create the runner pod." + retry_note,
                          start_time=first_run)
    pod_status = current.get("status") or {}
    for condition in pod_status.get("conditions") or []:
        if condition.get("type") == "PodScheduled" and condition.get("status") == "False":
            what = (f"{ctx.gpus} free {ctx.gpu_resource}" if ctx.gpus
                    else "a node with enough CPU and memory")
            return Assessment(
                EVALUATING, "Unschedulable",
                f"Waiting for {what}: {condition.get('message') or condition.get('reason')}. "
                f"The run starts when capacity frees up and fails if it has not finished "
                f"within spec.timeout ({ctx.timeout})." + retry_note,
                scheduled=False, scheduled_reason=str(condition.get("reason") or "Unschedulable"),
                start_time=first_run,
            )
    waiting = (_runner_status(current).get("state") or {}).get("waiting") or {}
    waiting_reason = str(waiting.get("reason") or "")
    grace_left = _grace_left(current, ctx, now) if waiting_reason in (
        *IMAGE_PULL_REASONS, *CONFIG_REASONS) else 0
    if waiting_reason in (*IMAGE_PULL_REASONS, *CONFIG_REASONS):
        return _start_failure(waiting, _runner_status(current).get("image"), grace_left,
                              first_run)
    node = current.get("spec", {}).get("nodeName")
    if pod_status.get("phase") == "Running":
        return Assessment(
            EVALUATING, "Running", f"Evaluating on node {node}." + retry_note,
            scheduled=True, running=True,
            start_time=first_run or _timestamp(pod_status.get("startTime")),
        )
    if not node:
        return Assessment(EVALUATING, "Scheduling", "Waiting for the scheduler." + retry_note,
                          start_time=first_run)
    return Assessment(
        EVALUATING, "Starting", f"Scheduled on node {node}; starting the runner." + retry_note,
        scheduled=True, start_time=first_run,
    )



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
        pending, failed = "ImagePullBackOff", "ImagePullError"
    else:
        what = f"The runner cannot start{yet}: {waiting.get('message', reason)}."
        fix = ("the Secrets named in spec.output.s3.credentialsSecretRef and "
               "spec.model.endpoint.apiKeySecretRef: they must exist in this namespace with "
               "the expected keys")
        pending, failed = "ContainerConfigPending", "ContainerConfigError"
    if grace_left:
        return Assessment(
            EVALUATING, pending,
            f"{what} The task fails if this lasts {grace_left}s more: check {fix}.",
            scheduled=True, start_time=first_run)
    return Assessment(FAILED, failed, f"{what} Check {fix}, then create a new task.",
                      scheduled=True)


def _condition_states(a: Assessment) -> dict[str, tuple[str, str, str]]:
    """type -> (status, reason, message)."""
    states: dict[str, tuple[str, str, str]] = {}
    if a.phase == COMPLETED:
        states["Ready"] = ("True", "Succeeded", a.message)
        states["Reconciling"] = ("False", "Succeeded", "")
        states["Stalled"] = ("False", "Succeeded", "")
        states["Succeeded"] = ("True", a.reason, a.message)
        states["Failed"] = ("False", "Succeeded", "")
        states["Running"] = ("False", "Finished", "")
    elif a.phase == FAILED:
        states["Ready"] = ("False", a.reason, a.message)
        states["Reconciling"] = ("False", a.reason, "")
        states["Stalled"] = ("True", a.reason, a.message)
        states["Succeeded"] = ("False", a.reason, "")
        states["Failed"] = ("True", a.reason, a.message)
        states["Running"] = ("False", "Finished", "")
    else:
        states["Ready"] = ("False", a.reason, a.message)
        states["Reconciling"] = ("True", a.reason, a.message)
        states["Stalled"] = ("False", a.reason, "")
        states["Running"] = ("True" if a.running else "False", a.reason, "")
    if a.scheduled is not None:
        states["Scheduled"] = (
            "True" if a.scheduled else "False",
            "Scheduled" if a.scheduled else (a.scheduled_reason or a.reason),
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
            if old is not None:
                merged.append(old)
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
    scores: dict[str, Any] | None = None,
) -> dict[str, Any]:
    status: dict[str, Any] = {
        "phase": a.phase,
        "reason": a.reason,
        "message": a.message,
        "observedGeneration": generation,
        "jobName": job_name,
        "configMapName": configmap_name,
        "results": results,
        "conditions": merge_conditions(previous.get("conditions") or [],
                                       _condition_states(a), generation, now),
    }
    start = previous.get("startTime") or a.start_time
    if start:
        status["startTime"] = start
    if a.phase in TERMINAL_PHASES:
        status["completionTime"] = previous.get("completionTime") or a.completion_time or now
    if scores:
        status.update(scores)
    if previous.get("progress"):
        status["progress"] = previous["progress"]
    return status
