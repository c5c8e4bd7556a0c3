"""Decisions the operator takes against the API, with a recording fake of the few calls it
makes: deleting in the right order, children of an older task, API refusals."""

from __future__ import annotations

import datetime
from typing import Any, cast

import pytest
from evaluation_operator import reconcile
from evaluation_operator.config import OperatorSettings
from kubernetes.client.exceptions import ApiException

UID = "0b6c4f5e-1111-2222-3333-444455556666"
OLD_UID = "99999999-1111-2222-3333-444455556666"
SETTINGS = OperatorSettings(s3_bucket="eval-results", purge_retry_max_seconds=60)


def task(status: dict[str, Any] | None = None, uid: str = UID) -> dict[str, Any]:
    return {
        "apiVersion": "evaluation.dev/v1alpha1", "kind": "EvaluationTask",
        "metadata": {"name": "t", "namespace": "team-a", "uid": uid, "generation": 1},
        "spec": {"model": {"name": "m", "endpoint": {"url": "http://m/v1"}},
                 "benchmarks": [{"name": "a", "dataset": {"uri": "s3://datasets/a.jsonl"},
                                 "task": "generation", "metrics": ["bleu"]}]},
        "status": status or {},
    }


def owned(kind: str, name: str, uid: str = UID) -> dict[str, Any]:
    return {"kind": kind, "metadata": {"name": name, "namespace": "team-a", "uid": f"{kind}-1",
                                       "ownerReferences": [{"kind": "EvaluationTask",
                                                            "uid": uid}]},
            "status": {}}


def pod(phase: str, node: str | None = "gpu-node-0") -> dict[str, Any]:
    return {"metadata": {"name": f"t-eval-{phase.lower()}"}, "spec": {"nodeName": node},
            "status": {"phase": phase}}


class FakeKube:
    def __init__(self, task: dict[str, Any], job: dict[str, Any] | None = None,
                 pods: list[dict[str, Any]] | None = None,
                 configmap: dict[str, Any] | None = None) -> None:
        self.task = task
        self.job = job
        self.configmap = configmap
        self.pods = pods or []
        self.calls: list[str] = []
        self.status_patches: list[dict[str, Any]] = []
        self.refuse_with: ApiException | None = None

    def get_task(self, namespace: str, name: str) -> dict[str, Any]:
        return self.task

    def patch_task_status(self, namespace: str, name: str, status: dict[str, Any]) -> None:
        self.status_patches.append(status)
        self.task["status"] = {**self.task.get("status", {}), **status}

    def create(self, manifest: dict[str, Any]) -> bool:
        self.calls.append(f"create {manifest['kind']}")
        if self.refuse_with is not None and manifest["kind"] == "Job":
            raise self.refuse_with
        existing = self.job if manifest["kind"] == "Job" else self.configmap
        if existing is not None:
            return False
        if manifest["kind"] == "Job":
            self.job = {**manifest, "metadata": {**manifest["metadata"], "uid": "job-1"},
                        "status": {}}
        else:
            self.configmap = manifest
        return True

    def get_job(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self.job

    def get_configmap(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self.configmap

    def delete_job(self, namespace: str, name: str) -> None:
        self.calls.append("delete Job")

    def job_pods(self, namespace: str, job: dict[str, Any]) -> list[dict[str, Any]]:
        return self.pods

    def task_pods(self, namespace: str, uid: str) -> list[dict[str, Any]]:
        return self.pods


class RecordingS3:
    def __init__(self, fail: bool = False) -> None:
        self.fail = fail
        self.purged: list[str] = []

    def get_paginator(self, name: str) -> Any:
        s3 = self

        class Paginator:
            def paginate(self, Bucket: str, Prefix: str) -> list[dict[str, Any]]:
                if s3.fail:
                    raise ConnectionError("S3 endpoint unreachable")
                s3.purged.append(Prefix)
                return [{}]

        return Paginator()


def as_kube(fake: FakeKube) -> reconcile.Kube:
    return cast(reconcile.Kube, fake)


# --- deletion -----------------------------------------------------------------------------


def test_never_started_needs_proof() -> None:
    unscheduled = pod("Pending", node=None)
    assert reconcile.runner_never_started({}, owned("Job", "t-eval"), [unscheduled])
    assert reconcile.runner_never_started({"reason": "InvalidSpec"}, None, [])
    # Anything that hints at a run, or a Job that is gone, means: purge.
    assert not reconcile.runner_never_started({"startTime": "x"}, owned("Job", "t-eval"), [])
    assert not reconcile.runner_never_started({"phase": "Completed"}, None, [])
    assert not reconcile.runner_never_started({}, None, [])
    assert not reconcile.runner_never_started({}, owned("Job", "t-eval"), [pod("Running")])
    failed_job = {**owned("Job", "t-eval"), "status": {"failed": 1}}
    assert not reconcile.runner_never_started({}, failed_job, [])


def test_task_that_never_ran_is_deleted_without_touching_s3() -> None:
    fake = FakeKube(task(), job=owned("Job", "t-eval"), pods=[pod("Pending", node=None)])
    s3 = RecordingS3(fail=True)
    reconcile.delete_task(fake.task, 0, SETTINGS, as_kube(fake), s3=s3)
    assert s3.purged == []


def test_a_running_runner_is_stopped_before_the_purge() -> None:
    started = {"startTime": "2026-01-01T00:00:00Z",
               "results": {"uri": f"s3://eval-results/runs/team-a/t/{UID}/"}}
    fake = FakeKube(task(started), job=owned("Job", "t-eval"), pods=[pod("Running")])
    s3 = RecordingS3()
    with pytest.raises(reconcile.RetryLater, match="to stop before deleting the results"):
        reconcile.delete_task(fake.task, 0, SETTINGS, as_kube(fake), s3=s3)
    assert fake.calls == ["delete Job"]
    assert s3.purged == [], "purging while the runner still writes would leave data behind"
    # Next attempt: the Job and its pod are gone.
    fake.job, fake.pods = None, []
    reconcile.delete_task(fake.task, 1, SETTINGS, as_kube(fake), s3=s3)
    assert s3.purged == [f"runs/team-a/t/{UID}/"]


def test_purge_failure_keeps_the_task_and_says_why() -> None:
    started = {"phase": "Completed", "startTime": "2026-01-01T00:00:00Z",
               "results": {"uri": f"s3://eval-results/runs/team-a/t/{UID}/"}}
    fake = FakeKube(task(started), job=owned("Job", "t-eval"), pods=[pod("Succeeded")])
    with pytest.raises(reconcile.RetryLater) as later:
        reconcile.delete_task(fake.task, 3, SETTINGS, as_kube(fake), s3=RecordingS3(fail=True))
    assert later.value.delay == 40
    condition = next(c for c in fake.task["status"]["conditions"]
                     if c["type"] == "ResultsPurged")
    assert (condition["status"], condition["reason"]) == ("False", "PurgeFailed")
    assert "S3 endpoint unreachable" in condition["message"]


def test_purge_backoff_grows_to_the_maximum() -> None:
    delays = [reconcile.purge_retry_delay(r, 300) for r in range(8)]
    assert delays == [5, 10, 20, 40, 80, 160, 300, 300]


def test_prefix_comes_from_the_spec_when_status_has_none() -> None:
    fake = FakeKube(task({}), job=None, pods=[])
    s3 = RecordingS3()
    reconcile.delete_task(fake.task, 0, SETTINGS, as_kube(fake), s3=s3)
    assert s3.purged == [f"runs/team-a/t/{UID}/"]


# --- creation -----------------------------------------------------------------------------


def test_children_of_an_older_task_with_the_same_name_are_waited_out() -> None:
    fake = FakeKube(task(), configmap=owned("ConfigMap", "t-config", uid=OLD_UID))
    with pytest.raises(reconcile.ForeignChildError, match="deleted task of the same name"):
        reconcile.ensure_children(fake.task, SETTINGS, as_kube(fake))
    assert "create Job" not in fake.calls
    assert fake.task["status"]["phase"] == "Evaluating"
    assert fake.task["status"]["reason"] == "PreviousRunCleanup"


def test_existing_children_of_this_task_are_reused_after_a_restart() -> None:
    fake = FakeKube(task(), job=owned("Job", "t-eval"), configmap=owned("ConfigMap", "t-config"))
    reconcile.ensure_children(fake.task, SETTINGS, as_kube(fake))
    assert fake.calls == ["create ConfigMap", "create Job"]
    assert fake.task["status"]["phase"] == "Evaluating"


def test_a_job_the_api_server_refuses_fails_the_task_with_its_message() -> None:
    fake = FakeKube(task())
    fake.refuse_with = ApiException(status=422, reason="Unprocessable Entity")
    fake.refuse_with.body = '{"message": "Job.batch \\"t-eval\\" is invalid: tolerations"}'
    reconcile.ensure_children(fake.task, SETTINGS, as_kube(fake))
    status = fake.task["status"]
    assert (status["phase"], status["reason"]) == ("Failed", "InvalidSpec")
    assert "tolerations" in status["message"]


def test_finished_tasks_are_left_alone() -> None:
    fake = FakeKube(task({"phase": "Completed"}))
    reconcile.ensure_children(fake.task, SETTINGS, as_kube(fake))
    assert fake.calls == []


# --- status refresh -----------------------------------------------------------------------


def test_a_lost_job_of_a_task_that_never_started_is_created_again() -> None:
    fake = FakeKube(task({"phase": "Evaluating", "reason": "JobPending"}))
    status = reconcile.refresh_status("team-a", "t", SETTINGS, as_kube(fake))
    assert fake.calls == ["create ConfigMap", "create Job"]
    assert status is not None and status["phase"] == "Evaluating"


def test_a_job_deleted_mid_run_fails_the_task_instead_of_running_again() -> None:
    fake = FakeKube(task({"phase": "Evaluating", "startTime": "2026-01-01T00:00:00Z"}))
    status = reconcile.refresh_status("team-a", "t", SETTINGS, as_kube(fake))
    assert fake.calls == []
    assert status is not None and (status["phase"], status["reason"]) == ("Failed", "JobDeleted")
    assert f"s3://eval-results/runs/team-a/t/{UID}/" in status["message"]


def test_refresh_waits_while_an_older_tasks_job_is_in_the_way() -> None:
    fake = FakeKube(task(), job=owned("Job", "t-eval", uid=OLD_UID),
                    configmap=owned("ConfigMap", "t-config", uid=OLD_UID))
    status = reconcile.refresh_status("team-a", "t", SETTINGS, as_kube(fake))
    assert status is not None and status["reason"] == "PreviousRunCleanup"


def test_a_pod_that_never_confirms_its_deletion_stops_blocking_after_a_deadline() -> None:
    now = datetime.datetime(2026, 1, 1, 1, 0, tzinfo=datetime.UTC)
    stuck = {**pod("Running"), "metadata": {
        "name": "t-eval-stuck", "deletionTimestamp": "2026-01-01T00:50:00Z",
        "deletionGracePeriodSeconds": 30}}
    stopping = {**pod("Running"), "metadata": {
        "name": "t-eval-stopping", "deletionTimestamp": "2026-01-01T00:59:00Z",
        "deletionGracePeriodSeconds": 30}}
    done = pod("Succeeded")
    assert reconcile.pods_still_running([stuck, stopping, done], now) == (
        ["t-eval-stopping"], ["t-eval-stuck"])
