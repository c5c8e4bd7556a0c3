"""Benchmarks x tasks: scores, deltas against the first task, and whether each delta
exceeds the combined standard error of the two scores."""

from __future__ import annotations

import math
from dataclasses import dataclass

from evaluation_console.model import TaskDetails


@dataclass(frozen=True)
class Cell:
    score: float | None
    stderr: float | None
    delta: float | None  # against the first task; None for the first task itself
    combined_stderr: float | None
    beyond_noise: bool | None  # |delta| > combined stderr; None when a stderr is unknown


@dataclass(frozen=True)
class ComparisonRow:
    benchmark: str
    cells: list[Cell]


@dataclass(frozen=True)
class Comparison:
    tasks: list[str]  # namespace/name, the first is the baseline
    rows: list[ComparisonRow]
    overall: list[Cell]


def _cell(score: float | None, stderr: float | None, base: Cell | None) -> Cell:
    if base is None:
        return Cell(score, stderr, None, None, None)
    delta = score - base.score if score is not None and base.score is not None else None
    combined = (math.sqrt(stderr ** 2 + base.stderr ** 2)
                if stderr is not None and base.stderr is not None else None)
    beyond = (abs(delta) > combined if delta is not None and combined is not None else None)
    return Cell(score, stderr, delta, combined, beyond)


def compare(details: list[TaskDetails]) -> Comparison:
    names: list[str] = []
    for d in details:
        names.extend(b.name for b in d.benchmarks if b.name not in names)
    rows = []
    for name in names:
        cells: list[Cell] = []
        for d in details:
            bench = next((b for b in d.benchmarks if b.name == name), None)
            cells.append(_cell(bench.score if bench else None,
                               bench.primary_stderr if bench else None,
                               cells[0] if cells else None))
        rows.append(ComparisonRow(name, cells))
    overall: list[Cell] = []
    for d in details:
        overall.append(_cell(d.row.overall, None, overall[0] if overall else None))
    return Comparison([d.row.key for d in details], rows, overall)
