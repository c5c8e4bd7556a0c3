"""spec.cancel and spec.gates from the user's side, on the real API server: cancel by patch
and by server-side apply, before the Job exists and after the run finished; admission of both
fields; gates passing and failing on a completed run; the Argo CD promotion gate's script.

The test plays the runner as test_lifecycle.py does: KWOK pods finished with the runner's
exit code and termination message, the runner's uploads written to moto's S3.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from devcluster.cluster import Cluster
from devcluster.kwok_pods import finish_pod

from tests.integration.conftest import (
    BUCKET,
    OperatorProcess,
    condition,
    create_task,
    prefix_of,
    running_pod,
    success_message,
    task_manifest,
    versions_under,
    wait_status,
)
from tests.support.s3 import S3Endpoint

pytestmark = [pytest.mark.cluster]
PROMOTION = Path(__file__).resolve().parents[2] / "gitops" / "argocd" / "promotion-gate.yaml"
SCORES = [
    {"name": "arc-easy", "score": 0.75, "primaryMetric": "accuracy",
     "metrics": {"accuracy": 0.75}, "samples": 4},
    {"name": "wmt-de-en", "score": 0.3012, "primaryMetric": "bleu",
     "metrics": {"bleu": 30.12, "exact-match": 0.25}, "samples": 4},
]


def events_of(cluster: Cluster, namespace: str, name: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = cluster.kubectl_json(
        "get", "events", "-n", namespace, "--field-selector",
        f"involvedObject.name={name}")["items"]
    return items


def wait_event(cluster: Cluster, namespace: str, name: str, reason: str) -> dict[str, Any]:
    found: dict[str, Any] = cluster.wait_until(f"a {reason} event on {name}", lambda: next(
        (e for e in events_of(cluster, namespace, name) if e["reason"] == reason), None),
        timeout=30)
    return found


def gone(cluster: Cluster, namespace: str, *objects: str) -> bool:
    return all(cluster.kubectl("get", o, "-n", namespace, check=False).returncode != 0
               for o in objects)


def cancel_patch(cluster: Cluster, namespace: str, name: str, value: bool = True,
                 check: bool = True) -> subprocess.CompletedProcess[str]:
    return cluster.kubectl("patch", "evaluationtask", name, "-n", namespace, "--type=merge",
                           "-p", json.dumps({"spec": {"cancel": value}}), check=check)


def complete(cluster: Cluster, namespace: str, core: Any, name: str,
             overall: float = 0.4508) -> dict[str, Any]:
    pod = running_pod(cluster, namespace, name)
    status = wait_status(cluster, namespace, name, "results location",
                         lambda s: s.get("results"))
    finish_pod(core, namespace, pod["metadata"]["name"], 0,
               message=success_message(overall, SCORES, status["results"]["uri"]))
    return wait_status(cluster, namespace, name, "Completed",
                       lambda s: s.get("phase") == "Completed")


# --- cancel ------------------------------------------------------------------------------------


@pytest.mark.kwok
def test_cancel_by_patch_stops_the_run_and_keeps_what_was_uploaded(
    cluster: Cluster, namespace: str, running_operator: OperatorProcess, s3_server: S3Endpoint,
) -> None:
    create_task(cluster, namespace, task_manifest("stopme"))
    pod = running_pod(cluster, namespace, "stopme")
    status = wait_status(cluster, namespace, "stopme", "Running",
                         lambda s: s.get("reason") == "Running")
    s3 = s3_server.client()
    prefix = prefix_of(status)
    for key, body in (("progress.json", b'{"samplesDone": 3, "samplesTotal": 8}'),
                      ("runner.log", b"benchmark arc-easy: 3 samples\n")):
        s3.put_object(Bucket=BUCKET, Key=prefix + key, Body=body)
    wait_status(cluster, namespace, "stopme", "progress",
                lambda s: (s.get("progress") or {}).get("text") == "3/8")

    cancel_patch(cluster, namespace, "stopme")
    status = wait_status(cluster, namespace, "stopme", "Cancelled",
                         lambda s: s.get("reason") == "Cancelled")
    assert status["phase"] == "Failed" and status["observedGeneration"] == 2
    assert "while Running, 3/8 samples scored" in status["message"]
    assert status["results"]["uri"] in status["message"]
    assert status["results"]["log"] == status["results"]["uri"] + "runner.log"
    assert condition(status, "Stalled")["status"] == "True"
    assert condition(status, "Failed")["reason"] == "Cancelled"
    cluster.wait_until("the Job and its pod deleted", lambda: gone(
        cluster, namespace, "job/stopme-eval", f"pod/{pod['metadata']['name']}"), timeout=60)
    event = wait_event(cluster, namespace, "stopme", "Cancelled")
    assert event["type"] == "Normal"  # deliberate: not a warning to alert on
    # Nothing purged: the uploads stay until the task is deleted.
    assert sorted(versions_under(s3, prefix)) == [prefix + "progress.json",
                                                  prefix + "runner.log"]

    refused = cancel_patch(cluster, namespace, "stopme", value=False, check=False)
    assert refused.returncode != 0
    assert "spec.cancel cannot go back to false" in refused.stderr


@pytest.mark.kwok
def test_cancel_by_server_side_apply_of_the_same_manifest(
    cluster: Cluster, namespace: str, running_operator: OperatorProcess,
) -> None:
    """What Argo CD and Flux do when the file in git gains `cancel: true`."""
    manifest = task_manifest("applied")
    manifest["metadata"]["namespace"] = namespace

    def apply() -> None:
        cluster.kubectl("apply", "--server-side", "--field-manager=argocd-controller", "-f", "-",
                        input=yaml.safe_dump(manifest))

    apply()
    running_pod(cluster, namespace, "applied")
    manifest["spec"]["cancel"] = True
    apply()
    status = wait_status(cluster, namespace, "applied", "Cancelled",
                         lambda s: s.get("reason") == "Cancelled")
    assert status["phase"] == "Failed"
    cluster.wait_until("the Job deleted", lambda: gone(cluster, namespace, "job/applied-eval"))
    # Still only cancel may change: an edit to anything else in the same apply is refused.
    manifest["spec"]["retries"] = 5
    refused = cluster.kubectl("apply", "--server-side", "--field-manager=argocd-controller",
                              "-f", "-", input=yaml.safe_dump(manifest), check=False)
    assert refused.returncode != 0 and "spec is immutable" in refused.stderr


def test_a_task_cancelled_before_its_job_exists_never_gets_one(
    cluster: Cluster, namespace: str, running_operator: OperatorProcess,
) -> None:
    create_task(cluster, namespace, task_manifest("never", cancel=True))
    status = wait_status(cluster, namespace, "never", "Cancelled",
                         lambda s: s.get("reason") == "Cancelled")
    assert status["phase"] == "Failed"
    assert "before its Job was created" in status["message"]
    wait_event(cluster, namespace, "never", "Cancelled")
    assert gone(cluster, namespace, "job/never-eval")


@pytest.mark.kwok
def test_cancelling_a_finished_task_changes_nothing(
    cluster: Cluster, namespace: str, running_operator: OperatorProcess, core: Any,
) -> None:
    create_task(cluster, namespace, task_manifest("finished"))
    before = complete(cluster, namespace, core, "finished")
    cancel_patch(cluster, namespace, "finished")
    after = wait_status(cluster, namespace, "finished", "generation 2 observed",
                        lambda s: s.get("observedGeneration") == 2)
    assert {k: v for k, v in after.items() if k not in ("observedGeneration", "conditions")} == \
        {k: v for k, v in before.items() if k not in ("observedGeneration", "conditions")}
    assert all(c["observedGeneration"] == 2 for c in after["conditions"])
    wait_event(cluster, namespace, "finished", "CancelIgnored")
    # kstatus (Flux) reads it as current again; `kubectl wait` still sees Ready.
    cluster.kubectl("wait", "-n", namespace, "--for=condition=Ready", "evt/finished",
                    "--timeout=5s")


# --- admission --------------------------------------------------------------------------------


def refused_with(cluster: Cluster, namespace: str, manifest: dict[str, Any]) -> str:
    result = cluster.kubectl("create", "-n", namespace, "-f", "-", input=json.dumps(manifest),
                             check=False)
    assert result.returncode != 0, f"{manifest['spec'].get('gates')} was accepted"
    return result.stderr


@pytest.mark.parametrize(("gates", "says"), [
    ([{"benchmark": "arc-hard", "metric": "accuracy", "min": 0.7}],
     "gate benchmark 'arc-hard' is not in spec.benchmarks"),
    ([{"benchmark": "arc-easy", "metric": "bleu", "min": 20}],
     "gate metric 'bleu' is not computed by benchmark 'arc-easy'"),
    ([{"benchmark": "wmt-de-en", "metric": "bleurt", "min": 0.5}],
     "gate metric 'bleurt' is not computed by benchmark 'wmt-de-en'"),
    ([{"overall": True, "benchmark": "arc-easy", "metric": "accuracy", "min": 0.7}],
     "set exactly one of benchmark (with metric) or overall true"),
    ([{"benchmark": "arc-easy", "min": 0.7}], "a benchmark gate needs a metric"),
    ([{"overall": True}], "set min (higher is better), max (lower is better) or both"),
    ([{"overall": True, "min": 0.9, "max": 0.1}], "spec.gates[0]: Invalid value: min is above max"),
])
def test_admission_refuses_gates_that_can_never_pass(
    cluster: Cluster, namespace: str, gates: list[dict[str, Any]], says: str,
) -> None:
    stderr = refused_with(cluster, namespace, task_manifest("gated", gates=gates))
    assert says in stderr, stderr


def test_admission_keeps_the_spec_immutable_except_cancel(
    cluster: Cluster, namespace: str,
) -> None:
    manifest = task_manifest("frozen", gates=[{"overall": True, "min": 0.5}])
    create_task(cluster, namespace, manifest)
    for change in ({"gates": [{"overall": True, "min": 0.1}]}, {"gates": None},
                   {"retries": 0}, {"timeout": "3h"}):
        result = cluster.kubectl("patch", "evt", "frozen", "-n", namespace, "--type=merge",
                                 "-p", json.dumps({"spec": change}), check=False)
        assert result.returncode != 0, change
        assert "spec is immutable once the task is created" in result.stderr
    cancel_patch(cluster, namespace, "frozen")
    cancel_patch(cluster, namespace, "frozen")  # true -> true: allowed, changes nothing
    for undo in ('{"spec": {"cancel": false}}', '{"spec": {"cancel": null}}'):
        result = cluster.kubectl("patch", "evt", "frozen", "-n", namespace, "--type=merge",
                                 "-p", undo, check=False)
        assert result.returncode != 0 and "cannot go back to false" in result.stderr, undo


# --- gates ------------------------------------------------------------------------------------


@pytest.mark.kwok
def test_gates_pass_and_fail_on_completed_runs(
    cluster: Cluster, namespace: str, running_operator: OperatorProcess, core: Any,
) -> None:
    passing = [{"benchmark": "arc-easy", "metric": "accuracy", "min": 0.7},
               {"benchmark": "wmt-de-en", "metric": "bleu", "min": 25},
               {"overall": True, "min": 0.4}]
    failing = [{"benchmark": "arc-easy", "metric": "accuracy", "min": 0.7},
               {"benchmark": "wmt-de-en", "metric": "exact-match", "max": 0.2},
               {"overall": True, "min": 0.65}]
    create_task(cluster, namespace, task_manifest("good", gates=passing))
    create_task(cluster, namespace, task_manifest("bad", gates=failing))
    running = wait_status(cluster, namespace, "good", "Running",
                          lambda s: s.get("reason") == "Running")
    assert condition(running, "Passed")["status"] == "Unknown"

    good = complete(cluster, namespace, core, "good")
    bad = complete(cluster, namespace, core, "bad")

    assert condition(good, "Passed")["status"] == "True"
    assert condition(good, "Passed")["reason"] == "GatesPassed"
    assert [(g["target"], g["value"], g["passed"]) for g in good["gates"]] == [
        ("arc-easy/accuracy", 0.75, True), ("wmt-de-en/bleu", 30.12, True),
        ("overall", 0.4508, True)]

    # A missed gate: the evaluation worked (Completed, Ready), the model did not pass.
    assert bad["phase"] == "Completed" and condition(bad, "Ready")["status"] == "True"
    passed = condition(bad, "Passed")
    assert (passed["status"], passed["reason"]) == ("False", "GatesFailed")
    assert passed["message"] == (
        "2 of 3 gate(s) failed: wmt-de-en/exact-match 0.25 is above the maximum 0.2; "
        "overall 0.4508 is below the minimum 0.65.")
    assert [g["passed"] for g in bad["gates"]] == [True, False, False]

    table = cluster.kubectl("get", "evt", "-n", namespace).stdout.splitlines()
    assert table[0].split()[:4] == ["NAME", "STATUS", "OVERALL", "PASSED"]
    rows = {line.split()[0]: line.split() for line in table[1:]}
    assert rows["good"][1:4] == ["Completed", "0.4508", "True"]
    assert rows["bad"][1:4] == ["Completed", "0.4508", "False"]

    assert wait_event(cluster, namespace, "good", "GatesPassed")["type"] == "Normal"
    event = wait_event(cluster, namespace, "bad", "GatesFailed")
    assert event["type"] == "Warning" and "overall 0.4508 is below" in event["message"]
    cluster.kubectl("wait", "-n", namespace, "--for=condition=Passed=False", "evt/bad",
                    "--timeout=5s")


@pytest.mark.kwok
def test_a_gate_on_a_metric_the_run_did_not_produce_fails(
    cluster: Cluster, namespace: str, running_operator: OperatorProcess, core: Any,
) -> None:
    create_task(cluster, namespace, task_manifest(
        "partial", gates=[{"benchmark": "wmt-de-en", "metric": "exact-match", "min": 0.1}]))
    pod = running_pod(cluster, namespace, "partial")
    status = wait_status(cluster, namespace, "partial", "results", lambda s: s.get("results"))
    without = [SCORES[0], {**SCORES[1], "metrics": {"bleu": 30.12}}]
    finish_pod(core, namespace, pod["metadata"]["name"], 0,
               message=success_message(0.45, without, status["results"]["uri"]))
    status = wait_status(cluster, namespace, "partial", "Completed",
                         lambda s: s.get("phase") == "Completed")
    assert condition(status, "Passed")["status"] == "False"
    assert "benchmark wmt-de-en did not produce metric exact-match" in \
        condition(status, "Passed")["message"]
    assert "value" not in status["gates"][0]


# --- the Argo CD promotion gate (gitops/argocd/promotion-gate.yaml) ----------------------------


def gate_script() -> tuple[str, dict[str, str]]:
    """The Job's shell script and its literal env, as the example ships them."""
    job = next(d for d in yaml.safe_load_all(PROMOTION.read_text()) if d["kind"] == "Job")
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert container["command"] == ["/bin/sh", "-c"]
    env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    return container["args"][0], env


def run_gate(cluster: Cluster, namespace: str, task: str) -> subprocess.CompletedProcess[str]:
    script, env = gate_script()
    path = f"{Path(cluster.kubectl_path).parent}:{os.environ['PATH']}"
    return subprocess.run(
        ["/bin/sh", "-c", script], capture_output=True, text=True, timeout=120, check=False,
        env={**os.environ, **env, "PATH": path, "KUBECONFIG": str(cluster.kubeconfig),
             "NAMESPACE": namespace, "TASK": f"evaluationtask/{task}"})


@pytest.mark.kwok
def test_the_promotion_gate_passes_only_a_model_that_passed_its_gates(
    cluster: Cluster, namespace: str, running_operator: OperatorProcess, core: Any,
) -> None:
    create_task(cluster, namespace, task_manifest("promote-me", gates=[
        {"benchmark": "arc-easy", "metric": "accuracy", "min": 0.7}]))
    create_task(cluster, namespace, task_manifest("keep-out", gates=[
        {"overall": True, "min": 0.65}]))
    running_pod(cluster, namespace, "promote-me")
    for name in ("promote-me", "keep-out"):
        complete(cluster, namespace, core, name)

    promoted = run_gate(cluster, namespace, "promote-me")
    assert promoted.returncode == 0, promoted.stderr
    assert "Completed Succeeded: All 1 gate(s) passed" in promoted.stdout
    refused = run_gate(cluster, namespace, "keep-out")
    assert refused.returncode != 0
    assert "overall 0.4508 is below the minimum 0.65" in refused.stdout
    assert "condition not met" in refused.stderr
