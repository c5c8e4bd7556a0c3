"""Names for the task's states: `Phase` (status.phase) and `Reason` (status.reason and the
conditions' reason), with what each implies for the operator.

One list: the docs' status table, the CRD and the tests are checked against these Enums.
"""

from __future__ import annotations

import enum


class Phase(enum.StrEnum):
    EVALUATING = "Evaluating"
    COMPLETED = "Completed"
    FAILED = "Failed"

    @property
    def terminal(self) -> bool:
        """Final: the operator never changes a Completed or Failed task's status again."""
        return self is not Phase.EVALUATING


class Reason(enum.StrEnum):
    # Evaluating: on the way to a running runner.
    JOB_PENDING = "JobPending"
    POD_PENDING = "PodPending"
    QUEUED = "Queued"
    SCHEDULING = "Scheduling"
    UNSCHEDULABLE = "Unschedulable"
    STARTING = "Starting"
    IMAGE_PULL_BACKOFF = "ImagePullBackOff"
    CONTAINER_CONFIG_PENDING = "ContainerConfigPending"
    MISSING_REFERENCE = "MissingReference"  # a Secret, ConfigMap, PVC... the spec names
    PREVIOUS_RUN_CLEANUP = "PreviousRunCleanup"
    RUNNING = "Running"
    COLLECTING_RESULTS = "CollectingResults"
    MERGING = "Merging"  # a sharded run: every shard answered; the merge Job scores them
    # Completed.
    SUCCEEDED = "Succeeded"
    # Failed.
    CONFIGURATION_ERROR = "ConfigurationError"
    RETRIES_EXHAUSTED = "RetriesExhausted"
    RUNNER_FAILED = "RunnerFailed"
    OOM_KILLED = "OOMKilled"
    DEADLINE_EXCEEDED = "DeadlineExceeded"
    IMAGE_PULL_ERROR = "ImagePullError"
    CONTAINER_CONFIG_ERROR = "ContainerConfigError"
    INVALID_SPEC = "InvalidSpec"
    JOB_DELETED = "JobDeleted"
    INVALID_RUNNER_OUTPUT = "InvalidRunnerOutput"  # the runner broke its contract
    RESULTS_UNREADABLE = "ResultsUnreadable"  # succeeded, scores unreadable past the limit
    CANCELLED = "Cancelled"  # spec.cancel: true; results uploaded so far are kept
    # failurePolicy: Continue and some benchmarks failed: the others' scores and the bundle.
    PARTIALLY_FAILED = "PartiallyFailed"
    REFERENCE_NOT_FOUND = "ReferenceNotFound"  # MissingReference past its grace period

    @property
    def phase(self) -> Phase:
        if self is Reason.SUCCEEDED:
            return Phase.COMPLETED
        if self in _FAILED:
            return Phase.FAILED
        return Phase.EVALUATING

    @property
    def warning(self) -> bool:
        """Something a user may have to act on: posted as a Warning event. A cancel is a
        deliberate act, not a failure to alert on."""
        return (self.phase is Phase.FAILED and self is not Reason.CANCELLED
                ) or self in _WARN_WHILE_EVALUATING

    @property
    def posts_event(self) -> bool:
        """Events only for what needs attention (they reach alerting through event
        exporters) and for a cancel (who asked and when is in the audit trail, the Event
        says it was done); everything else is in the status and not repeated (each Event
        is one more API write per task)."""
        return self.warning or self is Reason.CANCELLED

    @property
    def stops_job(self) -> bool:
        """The Job would wait until its deadline holding a GPU (or was cancelled): delete it
        at once."""
        return self in (Reason.IMAGE_PULL_ERROR, Reason.CONTAINER_CONFIG_ERROR,
                        Reason.CANCELLED, Reason.REFERENCE_NOT_FOUND)

    @property
    def on_the_way(self) -> bool:
        """A step towards a running runner that the next step replaces, seconds later on a
        healthy cluster: written only once it has lasted (`status_writes.hold_seconds`),
        so a task's normal path is Running then Completed, two status writes."""
        return self in _ON_THE_WAY

    @property
    def reads_s3(self) -> bool:
        """Periodic S3 reads while in this state: progress.json while running,
        summary.json while the scores are still missing. Nothing for any other state."""
        return self in (Reason.RUNNING, Reason.COLLECTING_RESULTS)


_FAILED = frozenset({
    Reason.CONFIGURATION_ERROR, Reason.RETRIES_EXHAUSTED, Reason.RUNNER_FAILED,
    Reason.OOM_KILLED, Reason.DEADLINE_EXCEEDED, Reason.IMAGE_PULL_ERROR,
    Reason.CONTAINER_CONFIG_ERROR, Reason.INVALID_SPEC, Reason.JOB_DELETED,
    Reason.INVALID_RUNNER_OUTPUT, Reason.RESULTS_UNREADABLE, Reason.CANCELLED,
    Reason.PARTIALLY_FAILED, Reason.REFERENCE_NOT_FOUND,
})
_ON_THE_WAY = frozenset({
    Reason.JOB_PENDING, Reason.POD_PENDING, Reason.SCHEDULING, Reason.STARTING,
})
_WARN_WHILE_EVALUATING = frozenset({
    Reason.UNSCHEDULABLE, Reason.IMAGE_PULL_BACKOFF, Reason.CONTAINER_CONFIG_PENDING,
    Reason.COLLECTING_RESULTS, Reason.MISSING_REFERENCE,
})


def reason_of(value: object) -> Reason | None:
    """The Reason named in a stored status, or None (absent, or written by another version)."""
    try:
        return Reason(str(value))
    except ValueError:
        return None
