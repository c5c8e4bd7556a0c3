"""spec.gates: parsing (the operator's own check of what the CRD's CEL refuses), the verdict
of each gate on a completed run's scores, and what the status shows."""

from __future__ import annotations

from typing import Any

import pytest
from evaluation_operator.config import OperatorSettings
from evaluation_operator.gates import (
    GateReason,
    ScoreTable,
    evaluate,
    evaluate_gate,
    passed_condition,
    summary,
)
from evaluation_operator.spec import Gate, SpecError, parse_task_spec
from evaluation_operator.states import Phase, Reason
from evaluation_operator.status import Assessment, render_status

SCORES = {"overallScore": 0.4508, "benchmarks": [
    {"name": "arc-easy", "score": 0.75, "metrics": {"accuracy": 0.75}, "samples": 4},
    {"name": "wmt", "score": 0.3012, "metrics": {"bleu": 30.12, "exact-match": 0.25}},
]}
TABLE = ScoreTable.from_status(SCORES)


def spec_with(gates: Any) -> dict[str, Any]:
    return {"model": {"name": "m", "endpoint": {"url": "http://m/v1"}},
            "benchmarks": [
                {"name": "arc-easy", "dataset": {"uri": "s3://datasets/a.jsonl"},
                 "task": "multiple-choice", "metrics": ["accuracy"]},
                {"name": "wmt", "dataset": {"uri": "s3://datasets/w.jsonl"}, "task": "generation",
                 "metrics": ["bleu", "exact-match"]}],
            "gates": gates}


def parse(gates: Any) -> tuple[Gate, ...]:
    return parse_task_spec(spec_with(gates), OperatorSettings(s3_bucket="r")).gates


def test_gates_parse_into_typed_values() -> None:
    assert parse([{"benchmark": "arc-easy", "metric": "accuracy", "min": 0.7},
                  {"overall": True, "min": 0, "max": 1}]) == (
        Gate("arc-easy", "accuracy", min=0.7), Gate(None, None, min=0.0, max=1.0))
    assert parse(None) == ()


@pytest.mark.parametrize(("gates", "field", "says"), [
    ([{"benchmark": "nope", "metric": "accuracy", "min": 1}], "spec.gates[0].benchmark",
     "'nope' is not in spec.benchmarks"),
    ([{"benchmark": "arc-easy", "metric": "bleu", "min": 1}], "spec.gates[0].metric",
     "'bleu' is not one of the metrics of benchmark 'arc-easy'"),
    ([{"benchmark": "arc-easy", "min": 1}], "spec.gates[0].metric", "needs a metric"),
    ([{"overall": True, "metric": "bleu", "min": 1}], "spec.gates[0].metric", "takes no metric"),
    ([{"overall": True, "benchmark": "wmt", "metric": "bleu", "min": 1}], "spec.gates[0]",
     "exactly one of"),
    ([{"min": 1}], "spec.gates[0]", "exactly one of"),
    ([{"overall": True}], "spec.gates[0]", "set min"),
    ([{"overall": True, "min": 0.9, "max": 0.1}], "spec.gates[0]", "min 0.9 is above max 0.1"),
    ([{"overall": True, "min": "high"}], "spec.gates[0].min", "is not a number"),
])
def test_bad_gates_name_the_field(gates: Any, field: str, says: str) -> None:
    with pytest.raises(SpecError) as error:
        parse(gates)
    assert error.value.field == field and says in error.value.message


@pytest.mark.parametrize(("gate", "passed", "value", "message"), [
    (Gate("arc-easy", "accuracy", min=0.7), True, 0.75, "arc-easy/accuracy 0.75 >= 0.7"),
    (Gate("arc-easy", "accuracy", min=0.8), False, 0.75,
     "arc-easy/accuracy 0.75 is below the minimum 0.8"),
    (Gate("wmt", "bleu", min=30), True, 30.12, "wmt/bleu 30.12 >= 30"),  # its own 0-100 scale
    (Gate("wmt", "exact-match", max=0.2), False, 0.25,
     "wmt/exact-match 0.25 is above the maximum 0.2"),
    (Gate("wmt", "exact-match", min=0.2, max=0.3), True, 0.25,
     "wmt/exact-match 0.25 in [0.2, 0.3]"),
    (Gate(None, None, min=0.4508), True, 0.4508, "overall 0.4508 >= 0.4508"),  # bound inclusive
    (Gate(None, None, min=0.5), False, 0.4508, "overall 0.4508 is below the minimum 0.5"),
    (Gate("wmt", "rouge-l", min=0.1), False, None,
     "wmt/rouge-l: benchmark wmt did not produce metric rouge-l; the gate cannot pass"),
    (Gate("other", "accuracy", min=0.1), False, None, "benchmark other has no scores"),
])
def test_each_gate_gets_its_value_and_verdict(gate: Gate, passed: bool, value: float | None,
                                              message: str) -> None:
    result = evaluate_gate(gate, TABLE)
    assert (result.passed, result.value) == (passed, value)
    assert message in result.message


def test_no_overall_score_fails_an_overall_gate() -> None:
    result = evaluate_gate(Gate(None, None, min=0.1), ScoreTable(None, {}))
    assert not result.passed and "no overall score" in result.message


def test_the_verdict_names_the_failing_gates_only() -> None:
    results = evaluate((Gate("arc-easy", "accuracy", min=0.7), Gate(None, None, min=0.5)),
                       TABLE)
    passed, message = summary(results)
    assert not passed
    assert message == "1 of 2 gate(s) failed: overall 0.4508 is below the minimum 0.5."
    assert summary(results[:1]) == (True, "All 1 gate(s) passed: "
                                          "arc-easy/accuracy 0.75 >= 0.7.")


def test_the_passed_condition_follows_the_run() -> None:
    results = evaluate((Gate(None, None, min=0.5),), TABLE)
    assert passed_condition(Phase.COMPLETED, Reason.SUCCEEDED, results, 0) is None
    assert (passed_condition(Phase.COMPLETED, Reason.SUCCEEDED, results, 1) or ())[:2] == (
        "False", GateReason.FAILED)
    assert (passed_condition(Phase.EVALUATING, Reason.RUNNING, None, 1) or ())[:2] == (
        "Unknown", GateReason.PENDING)
    failed = passed_condition(Phase.FAILED, Reason.CANCELLED, None, 1)
    assert failed is not None and failed[:2] == ("False", GateReason.NOT_EVALUATED)
    assert "Cancelled" in failed[2]


def conditions(status: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in status["conditions"]}


def render(a: Assessment, gates: tuple[Gate, ...], scores: dict[str, Any] | None = None
           ) -> dict[str, Any]:
    return render_status({}, a, generation=1, now="2026-01-01T00:00:00Z", job_name="t-eval",
                         configmap_name="t-config", results={}, scores=scores, gates=gates)


def test_a_completed_run_that_misses_a_gate_stays_completed_with_passed_false() -> None:
    gates = (Gate("arc-easy", "accuracy", min=0.7), Gate("wmt", "bleu", min=40))
    status = render(Assessment(Reason.SUCCEEDED, "done"), gates, SCORES)
    assert status["phase"] == "Completed" and conditions(status)["Ready"]["status"] == "True"
    passed = conditions(status)["Passed"]
    assert (passed["status"], passed["reason"]) == ("False", "GatesFailed")
    assert "wmt/bleu 30.12 is below the minimum 40" in passed["message"]
    assert "arc-easy" not in passed["message"]  # only the failing gates
    assert status["gates"] == [
        {"target": "arc-easy/accuracy", "benchmark": "arc-easy", "metric": "accuracy",
         "min": 0.7, "value": 0.75, "passed": True, "message": "arc-easy/accuracy 0.75 >= 0.7"},
        {"target": "wmt/bleu", "benchmark": "wmt", "metric": "bleu", "min": 40.0,
         "value": 30.12, "passed": False, "message": "wmt/bleu 30.12 is below the minimum 40"}]


def test_passed_is_true_when_every_gate_passes_and_absent_without_gates() -> None:
    status = render(Assessment(Reason.SUCCEEDED, "done"), (Gate(None, None, min=0.4),), SCORES)
    assert conditions(status)["Passed"]["status"] == "True"
    assert status["gates"][0] == {"target": "overall", "overall": True, "min": 0.4,
                                  "value": 0.4508, "passed": True,
                                  "message": "overall 0.4508 >= 0.4"}
    status = render(Assessment(Reason.SUCCEEDED, "done"), (), SCORES)
    assert "Passed" not in conditions(status) and "gates" not in status


def test_passed_is_unknown_while_running_and_false_when_the_run_fails() -> None:
    gates = (Gate(None, None, min=0.4),)
    running = render(Assessment(Reason.RUNNING, "on node x", running=True), gates)
    assert conditions(running)["Passed"]["status"] == "Unknown" and "gates" not in running
    failed = render(Assessment(Reason.OOM_KILLED, "out of memory"), gates)
    assert (conditions(failed)["Passed"]["status"],
            conditions(failed)["Passed"]["reason"]) == ("False", "RunNotCompleted")
