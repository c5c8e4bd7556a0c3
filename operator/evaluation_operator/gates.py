"""Pass/fail gates (`spec.gates`): thresholds on the scores of a completed run.

Pure functions. The scores come from the status fields the one runner-output parser produced
(`runner_output.Scores.status_fields`), so every number here is finite and checked. A run that
completed and misses a gate stays Completed (the evaluation worked); the verdict is the
`Passed` condition, `status.gates[]`, an Event and a metric.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from evaluation_operator.spec import Gate
from evaluation_operator.states import Phase, Reason

CONDITION = "Passed"


class GateReason(enum.StrEnum):
    """The `Passed` condition's reasons (also the Events' reasons)."""

    PASSED = "GatesPassed"  # True
    FAILED = "GatesFailed"  # False: the run completed and missed at least one gate
    PENDING = "GatesPending"  # Unknown: the run is not finished yet
    NOT_EVALUATED = "RunNotCompleted"  # False: the run failed or was cancelled


@dataclass(frozen=True)
class ScoreTable:
    """What a gate can read: the overall score and each benchmark's metrics."""

    overall: float | None
    metrics: Mapping[str, Mapping[str, float]]  # benchmark -> metric -> value

    @classmethod
    def from_status(cls, fields: Mapping[str, Any]) -> ScoreTable:
        """From `overallScore` and `benchmarks[]` as `Scores.status_fields` writes them."""
        overall = fields.get("overallScore")
        metrics = {str(b.get("name")): {str(k): float(v) for k, v in
                                        (b.get("metrics") or {}).items()}
                   for b in fields.get("benchmarks") or []}
        return cls(overall=float(overall) if overall is not None else None, metrics=metrics)


@dataclass(frozen=True)
class GateResult:
    gate: Gate
    value: float | None  # None: the run produced no such value
    passed: bool
    message: str

    def status_entry(self) -> dict[str, Any]:
        """One item of `status.gates[]`."""
        entry: dict[str, Any] = {"target": self.gate.target, "passed": self.passed,
                                 "message": self.message}
        if self.gate.benchmark is None:
            entry["overall"] = True
        else:
            entry["benchmark"] = self.gate.benchmark
            entry["metric"] = self.gate.metric
        for key, bound in (("min", self.gate.min), ("max", self.gate.max)):
            if bound is not None:
                entry[key] = bound
        if self.value is not None:
            entry["value"] = self.value
        return entry


def _number(value: float) -> str:
    return f"{value:.6g}"


def evaluate_gate(gate: Gate, scores: ScoreTable) -> GateResult:
    if gate.benchmark is None:
        value = scores.overall
        missing = "the run produced no overall score"
    else:
        produced = scores.metrics.get(gate.benchmark)
        value = None if produced is None else produced.get(gate.metric or "")
        missing = (f"benchmark {gate.benchmark} has no scores" if produced is None else
                   f"benchmark {gate.benchmark} did not produce metric {gate.metric}")
    if value is None:
        return GateResult(gate, None, False, f"{gate.target}: {missing}; the gate cannot pass")
    if gate.min is not None and value < gate.min:
        return GateResult(gate, value, False, f"{gate.target} {_number(value)} is below the "
                                              f"minimum {_number(gate.min)}")
    if gate.max is not None and value > gate.max:
        return GateResult(gate, value, False, f"{gate.target} {_number(value)} is above the "
                                              f"maximum {_number(gate.max)}")
    return GateResult(gate, value, True, f"{gate.target} {_number(value)} {gate.bounds}")


def evaluate(gates: tuple[Gate, ...], scores: ScoreTable) -> tuple[GateResult, ...]:
    return tuple(evaluate_gate(gate, scores) for gate in gates)


def summary(results: tuple[GateResult, ...]) -> tuple[bool, str]:
    """The verdict and what the `Passed` condition, the Event and the health checks say."""
    failed = [r for r in results if not r.passed]
    if not failed:
        return True, (f"All {len(results)} gate(s) passed: "
                      + "; ".join(r.message for r in results) + ".")
    return False, (f"{len(failed)} of {len(results)} gate(s) failed: "
                   + "; ".join(r.message for r in failed) + ".")


def passed_condition(phase: Phase, reason: Reason, results: tuple[GateResult, ...] | None,
                     gate_count: int) -> tuple[str, str, str] | None:
    """The `Passed` condition as (status, reason, message); None when the task has no gates.

    `results` are the evaluated gates of a Completed run (None before that)."""
    if not gate_count:
        return None
    if phase is Phase.COMPLETED and results is not None:
        passed, message = summary(results)
        return ("True" if passed else "False",
                (GateReason.PASSED if passed else GateReason.FAILED).value, message)
    if phase is Phase.FAILED:
        return ("False", GateReason.NOT_EVALUATED.value,
                f"The run ended {reason.value} before its scores could be checked against "
                f"its {gate_count} gate(s).")
    return ("Unknown", GateReason.PENDING.value,
            f"{gate_count} gate(s) are checked when the run completes.")
