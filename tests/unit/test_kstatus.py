"""Flux (and `kubectl wait`, and cli-utils) read our status through kstatus's rules: the
conditions the operator writes must give the right answer under those rules.

`kstatus` below is a plain transcription of the generic rules of
sigs.k8s.io/cli-utils/pkg/kstatus/status (Compute, for a type with no built-in rules):
deletionTimestamp -> Terminating; observedGeneration behind generation -> InProgress;
Reconciling=True -> InProgress; Stalled=True -> Failed; else Ready decides (True -> Current,
otherwise InProgress); no conditions at all -> Current.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.chart.task_statuses import statuses

CRD = Path(__file__).resolve().parents[2] / "crds" / "evaluation.dev_evaluationtasks.yaml"
CASES = statuses()
EXPECTED = {
    "new": "Current",  # kstatus's own rule for objects without conditions; see docs/gitops.md
    "job-pending": "InProgress",
    "waiting-for-gpu": "InProgress",
    "running": "InProgress",
    "running-with-progress": "InProgress",
    "running-a-benchmark": "InProgress",
    "completed": "Current",
    "partially-failed": "Failed",
    "retries-exhausted": "Failed",
    "configuration-error": "Failed",
    "deadline-exceeded": "Failed",
    "image-pull-error": "Failed",
    "purge-failing": "Terminating",
    "stale-generation": "InProgress",
    # A missed gate is not a failed evaluation: kstatus says Current (Ready=True); tools that
    # must stop on it read the Passed condition (docs/gitops.md).
    "completed-gates-passed": "Current",
    "completed-gates-failed": "Current",
    "cancelled": "Failed",
    "cancel-after-completion": "Current",
}
# metav1.Condition validation (k8s.io/apimachinery/pkg/apis/meta/v1/types.go).
CONDITION_TYPE = re.compile(
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
    r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])$")
CONDITION_REASON = re.compile(r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$")
RFC3339 = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)$")


def kstatus(obj: dict[str, Any]) -> str:
    meta, status = obj["metadata"], obj.get("status") or {}
    if meta.get("deletionTimestamp"):
        return "Terminating"
    observed = status.get("observedGeneration")
    if observed is not None and observed != meta.get("generation"):
        return "InProgress"
    conditions = {c["type"]: c["status"] for c in status.get("conditions") or []}
    if conditions.get("Reconciling") == "True":
        return "InProgress"
    if conditions.get("Stalled") == "True":
        return "Failed"
    if "Ready" in conditions:
        return "Current" if conditions["Ready"] == "True" else "InProgress"
    return "Current"


def test_every_situation_is_covered() -> None:
    assert set(EXPECTED) == set(CASES)


@pytest.mark.parametrize("situation", list(CASES))
def test_kstatus_reading(situation: str) -> None:
    assert kstatus(CASES[situation][0]) == EXPECTED[situation]


@pytest.mark.parametrize("situation", [s for s in CASES if (CASES[s][0].get("status"))])
def test_conditions_are_valid_metav1_conditions(situation: str) -> None:
    obj = CASES[situation][0]
    conditions = obj["status"]["conditions"]
    types = [c["type"] for c in conditions]
    assert len(types) == len(set(types)), "one condition per type"
    for c in conditions:
        assert CONDITION_TYPE.match(c["type"]) and len(c["type"]) <= 316
        assert c["status"] in ("True", "False", "Unknown")
        assert CONDITION_REASON.match(c["reason"]) and len(c["reason"]) <= 1024, c
        assert len(c["message"]) <= 32768
        assert RFC3339.match(c["lastTransitionTime"]), c
        assert c["observedGeneration"] == obj["status"]["observedGeneration"]
    by_type = {c["type"]: c["status"] for c in conditions}
    assert not (by_type.get("Reconciling") == "True" and by_type.get("Stalled") == "True")
    assert not (by_type.get("Ready") == "True" and by_type.get("Stalled") == "True")


def test_finished_tasks_are_final_for_kstatus() -> None:
    """Completed and Failed never claim to be reconciling: Flux stops waiting."""
    for situation in ("completed", "retries-exhausted", "deadline-exceeded"):
        conditions = {c["type"]: c for c in CASES[situation][0]["status"]["conditions"]}
        assert conditions["Reconciling"]["status"] == "False"


def test_the_crd_keeps_every_condition_field() -> None:
    """With a structural schema, undeclared status fields are pruned on write."""
    crd = yaml.safe_load(CRD.read_text())
    version = crd["spec"]["versions"][0]
    status = version["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"]
    assert "observedGeneration" in status
    item = status["conditions"]["items"]["properties"]
    assert {"type", "status", "reason", "message", "lastTransitionTime",
            "observedGeneration"} <= set(item)
    assert version["subresources"] == {"status": {}}
