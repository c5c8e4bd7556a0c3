"""The Argo CD health check (gitops/argocd/health.lua), run as Lua 5.1 (what Argo CD's
gopher-lua speaks) on task objects the operator's own status code produced."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.chart.task_statuses import statuses
from tests.support.requirements import require_module

lua51 = require_module("lupa.lua51")

ARGOCD_DIR = Path(__file__).resolve().parents[2] / "gitops" / "argocd"
HEALTH_LUA = (ARGOCD_DIR / "health.lua").read_text()
CASES = statuses()


def argocd_health(obj: dict[str, Any]) -> dict[str, str]:
    """Run the script as Argo CD does: `obj` is a global table, the script returns a table.
    Only the base library, string and table are available (no os, io or require)."""
    runtime = lua51.LuaRuntime(unpack_returned_tuples=True, register_eval=False)
    sandbox = runtime.eval("""function(obj, source)
        local env = {ipairs = ipairs, pairs = pairs, tostring = tostring, tonumber = tonumber,
                     type = type, string = string, table = table, math = math, obj = obj}
        local chunk = assert(loadstring(source, "health.lua"))
        setfenv(chunk, env)
        return chunk()
    end""")
    result = sandbox(runtime.table_from(obj, recursive=True), HEALTH_LUA)
    return {str(k): str(v) for k, v in result.items()}


@pytest.mark.parametrize("situation", list(CASES))
def test_health_follows_the_phase(situation: str) -> None:
    obj, expected = CASES[situation]
    health = argocd_health(obj)
    assert health["status"] == expected
    assert health.get("message"), "Argo CD shows the message in its UI; it must say something"


def test_healthy_shows_the_overall_score() -> None:
    assert argocd_health(CASES["completed"][0])["message"] == "Completed: overall score 0.7132"


def test_waiting_for_a_gpu_says_so() -> None:
    message = argocd_health(CASES["waiting-for-gpu"][0])["message"]
    assert "1 free nvidia.com/gpu" in message and "Insufficient nvidia.com/gpu" in message


def test_progress_is_in_the_message() -> None:
    assert "350/1000 samples" in argocd_health(CASES["running-with-progress"][0])["message"]


def test_degraded_names_the_reason_and_what_to_do() -> None:
    message = argocd_health(CASES["configuration-error"][0])["message"]
    assert message.startswith("ConfigurationError: ")
    assert "s3://datasets/x.jsonl does not exist" in message
    assert argocd_health(CASES["purge-failing"][0])["status"] == "Degraded"
    assert "AccessDenied" in argocd_health(CASES["purge-failing"][0])["message"]


def test_a_missed_gate_is_degraded_and_names_the_failing_gates() -> None:
    health = argocd_health(CASES["completed-gates-failed"][0])
    assert health["status"] == "Degraded"
    assert health["message"] == ("GatesFailed: 1 of 2 gate(s) failed: arc-easy/accuracy 0.81 "
                                 "is below the minimum 0.85.")
    assert argocd_health(CASES["completed-gates-passed"][0])["status"] == "Healthy"


def test_a_cancelled_task_is_suspended_not_degraded() -> None:
    health = argocd_health(CASES["cancelled"][0])
    assert health["status"] == "Suspended"
    assert health["message"].startswith("Cancelled: Cancelled (spec.cancel: true) while Running")
    assert argocd_health(CASES["cancel-after-completion"][0])["status"] == "Healthy"


def test_argocd_cm_snippet_carries_the_script_verbatim() -> None:
    snippet = yaml.safe_load((ARGOCD_DIR / "argocd-cm.yaml").read_text())
    assert snippet["metadata"] == {"name": "argocd-cm", "namespace": "argocd",
                                   "labels": snippet["metadata"]["labels"]}
    key = "resource.customizations.health.evaluation.dev_EvaluationTask"
    assert snippet["data"][key] == HEALTH_LUA
