"""The example Argo CD Applications and Flux objects under gitops/ point at the chart and
carry values the chart accepts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.chart.chart import CHART, env_of, one, render
from tests.support.tools import REPO_ROOT

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
