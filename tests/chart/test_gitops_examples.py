"""The example Argo CD Applications and Flux objects under gitops/ point at the chart and
carry values the chart accepts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from devcluster.cluster import Cluster
from devcluster.tools import REPO_ROOT

from tests.chart.chart import CHART, env_of, one, render
from tests.chart.conftest import new_namespace
from tests.integration.conftest import task_manifest

GITOPS = REPO_ROOT / "gitops"


def docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def operator_env(values: dict[str, Any]) -> dict[str, Any]:
    deployment = one(render(values), "Deployment")
    return env_of(deployment["spec"]["template"]["spec"]["containers"][0])


def test_argocd_application_installs_the_chart_with_valid_values() -> None:
    app = one(docs(GITOPS / "argocd" / "operator-application.yaml"), "Application")
    source = app["spec"]["source"]
    assert (REPO_ROOT / source["path"]).resolve() == CHART.resolve()
    env = operator_env(source["helm"]["valuesObject"])
    assert env["EVAL_S3_BUCKET"] == "eval-results"
    assert env["EVAL_NAMESPACES"] == "team-a,team-b"


def test_flux_helmrelease_installs_the_chart_with_valid_values() -> None:
    objects = docs(GITOPS / "flux" / "helmrelease.yaml")
    release = one(objects, "HelmRelease")
    assert (REPO_ROOT / release["spec"]["chart"]["spec"]["chart"]).resolve() == CHART.resolve()
    assert release["spec"]["install"]["crds"] == release["spec"]["upgrade"]["crds"] == \
        "CreateReplace"
    repository = one(objects, "GitRepository")
    assert release["spec"]["chart"]["spec"]["sourceRef"]["name"] == \
        repository["metadata"]["name"]
    assert operator_env(release["spec"]["values"])["EVAL_S3_REGION"] == "eu-west-1"


@pytest.mark.parametrize("path", ["argocd/evaluations-application.yaml",
                                  "flux/evaluations-kustomization.yaml"])
def test_evaluation_sources_never_prune_results_away(path: str) -> None:
    for obj in docs(GITOPS / path):
        if obj["kind"] == "Application":
            assert obj["spec"]["syncPolicy"]["automated"]["prune"] is False
        if obj["kind"] == "Kustomization":
            assert obj["spec"]["prune"] is False
            assert obj["spec"]["force"] is False
            assert obj["spec"]["wait"] is False


# --- what a GitOps tool meets on the real API server --------------------------------------------


@pytest.mark.cluster
def test_git_edits_to_a_task_spec_are_rejected_and_force_recreates(
        cluster: Cluster, namespaces: list[str]) -> None:
    """What Argo CD / Flux do, done with kubectl: apply (server-side, as both can), replace,
    and replace --force (Argo CD's Force=true,Replace=true; Flux's force)."""
    namespace = new_namespace(cluster, namespaces, "gitops")
    task = task_manifest("nightly")
    task["metadata"]["namespace"] = namespace
    applied = yaml.safe_dump(task)
    cluster.kubectl("apply", "--server-side", "--field-manager=argocd-controller", "-f", "-",
                    input=applied)
    first_uid = cluster.kubectl_json("get", "evt", "nightly", "-n", namespace)["metadata"]["uid"]

    # Labels and annotations (tracking labels, sync options) may change.
    task["metadata"]["labels"] = {"app.kubernetes.io/instance": "evaluations-team-a"}
    task["metadata"]["annotations"] = {"argocd.argoproj.io/sync-options": "Force=true"}
    cluster.kubectl("apply", "--server-side", "--field-manager=argocd-controller", "-f", "-",
                    input=yaml.safe_dump(task))

    # The spec may not, however it is sent.
    task["spec"]["benchmarks"][0]["limit"] = 10
    edited = yaml.safe_dump(task)
    for verb in (["apply", "--server-side", "--field-manager=argocd-controller"],
                 ["apply"], ["replace"]):
        result = cluster.kubectl(*verb, "-f", "-", input=edited, check=False)
        assert result.returncode != 0, verb
        assert "spec is immutable once the task is created" in result.stderr, result.stderr

    # Delete and create: a new task (new uid, so new results prefix); the old one is gone.
    cluster.kubectl("replace", "--force", "-f", "-", input=edited)
    recreated = cluster.kubectl_json("get", "evt", "nightly", "-n", namespace)
    assert recreated["metadata"]["uid"] != first_uid
    assert recreated["spec"]["benchmarks"][0]["limit"] == 10


def test_argocd_promotion_gate_is_a_sync_hook_before_the_promotion() -> None:
    """The gate Job (its script runs in tests/integration/test_cancel_and_gates.py) fails
    the sync before the wave that promotes; it may only read EvaluationTasks."""
    objects = docs(GITOPS / "argocd" / "promotion-gate.yaml")
    job = one(objects, "Job")
    annotations = job["metadata"]["annotations"]
    assert annotations["argocd.argoproj.io/hook"] == "Sync"
    gate_wave = int(annotations["argocd.argoproj.io/sync-wave"])
    promoted = one(objects, "Deployment")
    assert int(promoted["metadata"]["annotations"]["argocd.argoproj.io/sync-wave"]) > gate_wave
    assert job["spec"]["backoffLimit"] == 0
    pod = job["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == one(objects, "ServiceAccount")["metadata"]["name"]
    assert one(objects, "Role")["rules"] == [{"apiGroups": ["evaluation.dev"],
                                              "resources": ["evaluationtasks"],
                                              "verbs": ["get", "list", "watch"]}]
    script = pod["containers"][0]["args"][0]
    assert "--for=condition=Passed=True" in script and "--for=condition=Reconciling=False" \
        in script


def test_flux_promotion_depends_on_a_gate_that_reads_passed() -> None:
    objects = {o["metadata"]["name"]: o for o in docs(GITOPS / "flux" / "promotion.yaml")}
    gate, production = objects["evaluation-gate"], objects["model-production"]
    assert production["spec"]["dependsOn"] == [{"name": "evaluation-gate"}]
    assert gate["spec"]["wait"] is True and gate["spec"]["prune"] is False
    (check,) = gate["spec"]["healthCheckExprs"]
    assert (check["apiVersion"], check["kind"]) == ("evaluation.dev/v1alpha1", "EvaluationTask")
    assert "c.type == 'Passed' && c.status == 'True'" in check["current"]
    assert "c.type == 'Passed' && c.status == 'False'" in check["failed"]
    assert "status.phase == 'Failed'" in check["failed"]
