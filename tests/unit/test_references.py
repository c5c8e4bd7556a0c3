"""What Kubernetes says about a missing Secret, ConfigMap, PVC, PriorityClass or LocalQueue,
mapped back to the task's own field, and the status users then read."""

from __future__ import annotations

import datetime
from typing import Any

from evaluation_operator import references as refs
from evaluation_operator.config import OperatorSettings
from evaluation_operator.references import Kind, Missing, Reference
from evaluation_operator.spec import parse_task_spec
from evaluation_operator.states import Phase, Reason
from evaluation_operator.status import TaskContext, assess

SETTINGS = OperatorSettings(s3_bucket="eval-results", s3_credentials_secret="s3-default")
NS = "team-a"


def spec(**overrides: Any) -> Any:
    raw: dict[str, Any] = {
        "model": {"name": "m", "endpoint": {
            "url": "http://m:8000/v1", "apiKeySecretRef": {"name": "llm-key", "key": "token"}}},
        "benchmarks": [
            {"name": "arc", "dataset": {"uri": "s3://datasets/arc.jsonl"},
             "task": "multiple-choice", "metrics": ["accuracy"]},
            {"name": "local", "dataset": {"configMap": {"name": "qa", "key": "qa.jsonl"}},
             "task": "generation", "metrics": ["exact-match"]},
            {"name": "big", "dataset": {"pvc": {"claimName": "corpus", "path": "a.jsonl"}},
             "task": "generation", "metrics": ["exact-match"]},
        ],
        "scheduling": {"priorityClassName": "eval-high", "queueName": "gpu-q"},
    }
    raw.update(overrides)
    return parse_task_spec(raw, SETTINGS)


REFS = refs.references(spec())


def ctx(**overrides: Any) -> TaskContext:
    base = TaskContext(job_name="t-eval", timeout="2h", retries=2, gpus=1,
                       gpu_resource="nvidia.com/gpu", memory="8Gi",
                       start_failure_grace_seconds=120, namespace=NS, references=REFS)
    return TaskContext(**{**base.__dict__, **overrides})


def job(suspend: bool = False) -> dict[str, Any]:
    return {"metadata": {"name": "t-eval", "uid": "j"}, "spec": {"suspend": suspend},
            "status": {}}


def pending_pod(waiting: dict[str, str] | None = None, unschedulable: str = "",
                scheduled_at: str = "2026-01-01T00:00:00Z") -> dict[str, Any]:
    condition = ({"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                  "message": unschedulable} if unschedulable else
                 {"type": "PodScheduled", "status": "True", "lastTransitionTime": scheduled_at})
    return {"metadata": {"name": "p", "creationTimestamp": scheduled_at},
            "spec": {"nodeName": None if unschedulable else "gpu-0"},
            "status": {"phase": "Pending", "conditions": [condition], "containerStatuses": [
                {"name": "runner", "image": "img", "state": {"waiting": waiting}
                 if waiting else {}}]}}


def at(seconds: int) -> datetime.datetime:
    return datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC) + datetime.timedelta(
        seconds=seconds)


def test_every_reference_of_a_spec_names_the_tasks_field() -> None:
    by_field = {(r.field, r.key) for r in REFS}
    assert by_field == {
        ("spec.model.endpoint.apiKeySecretRef.name", "token"),
        ("spec.output.s3.credentialsSecretRef.name", "AWS_ACCESS_KEY_ID"),
        ("spec.output.s3.credentialsSecretRef.name", "AWS_SECRET_ACCESS_KEY"),
        ("spec.benchmarks[1].dataset.configMap.name", "qa.jsonl"),
        ("spec.benchmarks[2].dataset.pvc.claimName", None),
        ("spec.scheduling.priorityClassName", None),
        ("spec.scheduling.queueName", None),
    }
    model_pvc = spec(model={"name": "m", "source": {"pvc": {"claimName": "weights"}}})
    assert Reference(Kind.PVC, "weights", "spec.model.source.pvc.claimName") in \
        refs.references(model_pvc)


def test_a_missing_secret_names_the_field_that_references_it() -> None:
    api_key = refs.from_container_config_error('secret "llm-key" not found', REFS, NS)
    assert api_key is not None
    assert api_key.what() == ('spec.model.endpoint.apiKeySecretRef.name: Secret "llm-key" not '
                              'found in namespace "team-a"')
    s3 = refs.from_container_config_error('secret "s3-default" not found', REFS, NS)
    assert s3 is not None and s3.field == "spec.output.s3.credentialsSecretRef.name"
    assert "not set: the operator's default Secret" in s3.what()
    given = spec(output={"s3": {"credentialsSecretRef": {"name": "mine"}}})
    own = refs.from_container_config_error('secret "mine" not found',
                                           refs.references(given), NS)
    assert own is not None and "default" not in own.what()


def test_a_missing_key_names_the_key_field_or_the_fixed_key() -> None:
    key = refs.from_container_config_error(
        "couldn't find key token in Secret team-a/llm-key", REFS, NS)
    assert key is not None and key.key_missing
    assert key.what() == ('spec.model.endpoint.apiKeySecretRef.key: Secret "llm-key" in '
                          'namespace "team-a" has no key "token"')
    fixed = refs.from_container_config_error(
        "couldn't find key AWS_SECRET_ACCESS_KEY in Secret team-a/s3-default", REFS, NS)
    assert fixed is not None and fixed.field == "spec.output.s3.credentialsSecretRef.name"
    assert 'has no key "AWS_SECRET_ACCESS_KEY"' in fixed.what()


def test_an_error_about_something_the_task_does_not_name_maps_to_nothing() -> None:
    for message in ('secret "other" not found', "couldn't find key x in Secret team-a/llm-key",
                    "failed to sync configmap cache: timed out", ""):
        assert refs.from_container_config_error(message, REFS, NS) is None, message
    assert refs.from_scheduler_message("0/3 nodes are available: 3 Insufficient cpu.", REFS,
                                       NS) is None
    assert refs.from_failed_create('pods "x" is forbidden: exceeded quota: q', REFS, NS) is None


def test_a_missing_configmap_or_key() -> None:
    ref = next(r for r in REFS if r.kind is Kind.CONFIG_MAP)
    gone = refs.from_configmap(ref, None, NS)
    assert gone is not None and gone.what() == (
        'spec.benchmarks[1].dataset.configMap.name: ConfigMap "qa" not found in namespace '
        '"team-a"')
    no_key = refs.from_configmap(ref, frozenset({"other.jsonl"}), NS)
    assert no_key is not None and no_key.field == "spec.benchmarks[1].dataset.configMap.key"
    assert refs.from_configmap(ref, frozenset({"qa.jsonl"}), NS) is None
    # The kubelet's own words (a ConfigMap in env) map the same way.
    assert refs.from_container_config_error('configmap "qa" not found', REFS, NS) == gone


def test_a_missing_pvc_from_the_schedulers_message() -> None:
    message = ('0/3 nodes are available: persistentvolumeclaim "corpus" not found. '
               'preemption: 0/3 nodes are available: 3 Preemption is not helpful.')
    missing = refs.from_scheduler_message(message, REFS, NS)
    assert missing is not None and missing.field == "spec.benchmarks[2].dataset.pvc.claimName"


def test_an_unbound_pvc_is_named_instead_of_waiting_for_a_gpu() -> None:
    message = ("0/3 nodes are available: pod has unbound immediate PersistentVolumeClaims. "
               "preemption: 0/3 nodes are available: 3 Preemption is not helpful.")
    ctx = TaskContext(job_name="t-eval", timeout="2h", retries=0, gpus=1,
                      gpu_resource="nvidia.com/gpu", memory="16Gi", namespace=NS,
                      references=REFS)
    pending = {"metadata": {"name": "p", "creationTimestamp": "2026-01-01T00:00:01Z"},
               "spec": {}, "status": {"phase": "Pending", "conditions": [{
                   "type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                   "message": message}]}}
    job = {"metadata": {"name": "t-eval"}, "spec": {}, "status": {}}
    a = assess(job, [pending], ctx)
    assert (a.phase, a.reason) == (Phase.EVALUATING, Reason.UNSCHEDULABLE)
    assert 'PersistentVolumeClaim "corpus" (spec.benchmarks[2].dataset.pvc.claimName)' in a.message
    assert "free nvidia.com/gpu" not in a.message
    assert refs.unbound_claims("0/3 nodes are available: 3 Insufficient cpu.", REFS) == ()


def test_a_missing_priority_class_from_the_job_controllers_event() -> None:
    message = 'pods "t-eval-x" is forbidden: no PriorityClass with name eval-high was found'
    missing = refs.from_failed_create(message, REFS, NS)
    assert missing is not None
    assert missing.what() == ('spec.scheduling.priorityClassName: PriorityClass "eval-high" '
                              "not found")
    assert "ask a cluster admin" in missing.fix().lower()


def test_secret_status_waits_out_the_grace_then_fails_naming_the_field() -> None:
    waiting = pending_pod({"reason": "CreateContainerConfigError",
                           "message": 'secret "llm-key" not found'})
    early = assess(job(), [waiting], ctx(), now=at(30))
    assert (early.phase, early.reason) == (Phase.EVALUATING, Reason.MISSING_REFERENCE)
    assert early.message.startswith("spec.model.endpoint.apiKeySecretRef.name: Secret "
                                    '"llm-key" not found in namespace "team-a". Create')
    assert "still missing at 2026-01-01T00:02:00Z" in early.message
    assert early.recheck_seconds == 90
    # Recomputed later, the message is the same: no new status write for a ticking clock.
    assert assess(job(), [waiting], ctx(), now=at(60)).message == early.message
    assert early.reason.warning and early.reason.posts_event
    late = assess(job(), [waiting], ctx(), now=at(200))
    assert (late.phase, late.reason) == (Phase.FAILED, Reason.REFERENCE_NOT_FOUND)
    assert late.reason.stops_job and "then create a new task" in late.message
    # Another CreateContainerConfigError keeps the generic reason.
    other = pending_pod({"reason": "CreateContainerConfigError", "message": "no such user"})
    assert assess(job(), [other], ctx(), now=at(30)).reason is Reason.CONTAINER_CONFIG_PENDING


def test_pvc_status_waits_for_the_claim() -> None:
    pod = pending_pod(unschedulable='0/3 nodes are available: persistentvolumeclaim "corpus" '
                                    "not found.")
    a = assess(job(), [pod], ctx(), now=at(10_000))
    assert (a.phase, a.reason, a.scheduled) == (Phase.EVALUATING, Reason.MISSING_REFERENCE,
                                                False)
    assert a.message.startswith("spec.benchmarks[2].dataset.pvc.claimName: "
                                'PersistentVolumeClaim "corpus" not found')
    assert "the run starts once it exists" in a.message and "spec.timeout (2h)" in a.message


def test_priority_class_status_from_the_failed_create_event() -> None:
    refused = ctx(failed_create='pods "t-eval-x" is forbidden: no PriorityClass with name '
                                "eval-high was found", failed_create_since=at(0))
    early = assess(job(), [], refused, now=at(60))
    assert (early.reason, early.scheduled) == (Reason.MISSING_REFERENCE, False)
    assert early.message.startswith("spec.scheduling.priorityClassName: PriorityClass")
    assert "still missing at 2026-01-01T00:02:00Z" in early.message
    assert assess(job(), [], refused, now=at(121)).reason is Reason.REFERENCE_NOT_FOUND
    quota = ctx(failed_create='pods "t-eval-x" is forbidden: exceeded quota: gpus')
    pending = assess(job(), [], quota, now=at(60))
    assert pending.reason is Reason.POD_PENDING and "exceeded quota: gpus" in pending.message


def test_local_queue_status_while_queued() -> None:
    ref = next(r for r in REFS if r.kind is Kind.LOCAL_QUEUE)
    missing = assess(job(suspend=True), [], ctx(missing_queue=Missing(ref, NS)), now=at(9999))
    assert (missing.phase, missing.reason) == (Phase.EVALUATING, Reason.MISSING_REFERENCE)
    assert missing.message.startswith('spec.scheduling.queueName: LocalQueue "gpu-q" not '
                                      'found in namespace "team-a"')
    assert "Kueue admits the Job once it exists" in missing.message
    no_kueue = assess(job(suspend=True), [], ctx(missing_queue=Missing(ref, NS, no_api=True)))
    assert "is Kueue installed?" in no_kueue.message and "Install Kueue" in no_kueue.message
    assert assess(job(suspend=True), [], ctx()).reason is Reason.QUEUED


def test_every_kind_has_a_policy() -> None:
    assert set(refs.POLICY) == set(Kind)
