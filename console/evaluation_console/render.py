"""Terminal output: rich tables for `-o table`, the read model as JSON or YAML otherwise."""

from __future__ import annotations

import json
from typing import Any

import yaml
from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

from evaluation_console.compare import Cell, Comparison
from evaluation_console.model import MetricRow, Phase, TaskDetails, TaskRow, age, to_plain
from evaluation_console.samples import SampleDiff, SamplePage

PHASE_STYLE = {Phase.COMPLETED: "green", Phase.FAILED: "red", Phase.EVALUATING: "yellow",
               Phase.PENDING: "dim"}


def dump(value: Any, output: str) -> str:
    plain = to_plain(value)
    if output == "json":
        return json.dumps(plain, indent=2, ensure_ascii=False)
    return yaml.safe_dump(plain, sort_keys=False, allow_unicode=True)


def score(value: float | None, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def metric_value(metric: MetricRow) -> str:
    text = f"{metric.value:.4g}" if metric.scale == 100 else f"{metric.value:.4f}"
    if metric.stderr is not None:
        text += f" ± {metric.stderr:.4f}"
    return text


def phase_text(row: TaskRow) -> Text:
    label = "Deleting" if row.deleting else row.phase.value
    return Text(label, style="magenta" if row.deleting else PHASE_STYLE[row.phase])


def tasks_table(rows: list[TaskRow], all_namespaces: bool) -> Table:
    table = Table(box=None, header_style="bold", pad_edge=False)
    if all_namespaces:
        table.add_column("NAMESPACE")
    for column in ("NAME", "STATUS", "OVERALL", "MODEL", "PROGRESS", "AGE"):
        table.add_column(column, justify="right" if column == "OVERALL" else "left")
    for row in rows:
        cells: list[Any] = [row.namespace] if all_namespaces else []
        cells += [row.name, phase_text(row), score(row.overall), row.model,
                  row.progress.text or "-", age(row.created)]
        table.add_row(*cells)
    return table


def details_view(d: TaskDetails) -> Group:
    row = d.row
    head = Table.grid(padding=(0, 2))
    head.add_column(style="bold")
    head.add_column()
    head.add_row("Task", f"{row.namespace}/{row.name}")
    head.add_row("Status", phase_text(row))
    head.add_row("Overall", score(row.overall))
    head.add_row("Model", row.model + (f"  ({d.model.get('endpoint')})"
                                       if d.model.get("endpoint") else ""))
    if row.progress.total:
        head.add_row("Progress", row.progress.text)
    if row.phase is Phase.FAILED or row.reason:
        head.add_row("Reason", row.reason or "-")
    if row.message:
        head.add_row("Message", row.message)
    head.add_row("Results", d.bundle_uri or row.results_uri or "-")
    parts: list[Any] = [head]
    if d.results_note:
        parts.append(Text(d.results_note, style="yellow"))
    if d.benchmarks:
        bench = Table(title="Benchmarks", title_justify="left", header_style="bold")
        for column in ("BENCHMARK", "SCORE", "PRIMARY", "METRICS (± stderr)", "SAMPLES"):
            bench.add_column(column)
        for b in d.benchmarks:
            metrics = Text("\n".join(f"{m.name}: {metric_value(m)}" for m in b.metrics))
            if b.error:
                metrics = Text(f"failed: {b.error}", style="red")
            bench.add_row(b.name, score(b.score), b.primary_metric, metrics,
                          "-" if b.samples is None else str(b.samples))
        parts.append(bench)
    config = Table.grid(padding=(0, 2))
    config.add_column(style="bold")
    config.add_column()
    framework = d.framework.get("name", "-")
    if d.framework.get("version"):
        framework += f" {d.framework['version']}"
    config.add_row("Framework", str(framework))
    for ds in d.datasets:
        extra = []
        if ds.sha256:
            extra.append(f"sha256 {ds.sha256[:16]}…")
        if ds.rows is not None:
            extra.append(f"{ds.rows} rows")
        if ds.samples is not None:
            extra.append(f"{ds.samples} samples")
        config.add_row(f"Dataset {ds.benchmark}", ds.uri + (f"  ({', '.join(extra)})"
                                                            if extra else ""))
    if d.parameters:
        config.add_row("Parameters", ", ".join(f"{k}={v}" for k, v in d.parameters.items()))
    for label, value in (("Started", d.timings.get("startedAt") or d.start_time),
                         ("Finished", d.timings.get("finishedAt") or d.completion_time),
                         ("Seconds", d.timings.get("seconds"))):
        if value is not None:
            config.add_row(label, str(value))
    parts += [Text("Configuration", style="bold italic"), config]
    return Group(*parts)


def samples_table(page: SamplePage, benchmark: str) -> Group:
    table = Table(header_style="bold", show_lines=True, expand=True)
    for column, ratio in (("#", 0), ("INPUT", 4), ("PREDICTION", 3), ("REFERENCE", 2),
                          ("SCORES", 2), ("", 0)):
        table.add_column(column, ratio=ratio or None, overflow="fold")
    for s in page.samples:
        mark = Text("✓", style="green") if s.right else (
            Text("✗", style="red") if s.right is False else Text("·"))
        table.add_row(str(s.index), s.input, s.prediction, s.reference,
                      "\n".join(f"{k}: {v:.3f}" for k, v in s.scores.items()), mark)
    shown = (f"{page.offset + 1}-{page.offset + len(page.samples)}" if page.samples else "0")
    footer = Text(f"{benchmark}: showing {shown} of {page.matched} matching "
                  f"({page.total} samples)", style="dim")
    return Group(table, footer)


def _cell(cell: Cell) -> Text:
    text = Text(score(cell.score))
    if cell.delta is not None:
        style = "green" if cell.delta > 0 else "red" if cell.delta < 0 else "dim"
        text.append(f"  {cell.delta:+.4f}", style=style)
        if cell.beyond_noise:
            text.append(" *", style="bold")
    return text


def comparison_table(c: Comparison) -> Group:
    table = Table(header_style="bold")
    table.add_column("BENCHMARK")
    for index, key in enumerate(c.tasks):
        table.add_column(key + (" (baseline)" if index == 0 else ""), justify="right")
    for row in c.rows:
        table.add_row(row.benchmark, *[_cell(cell) for cell in row.cells])
    table.add_row(Text("overall", style="bold"), *[_cell(cell) for cell in c.overall])
    note = Text("deltas against the baseline; * the delta exceeds the combined standard "
                "error of the two scores", style="dim")
    return Group(table, note)


def differences_table(diffs: list[SampleDiff], count: int, left: str, right: str) -> Group:
    table = Table(header_style="bold", show_lines=True, expand=True)
    for column in ("#", "INPUT", "REFERENCE", left, right):
        table.add_column(column, overflow="fold")
    for d in diffs:
        def mark(right_: bool | None) -> str:
            return " ✓" if right_ else " ✗" if right_ is False else ""
        table.add_row(str(d.index), d.input, d.reference,
                      d.left.prediction + mark(d.left.right),
                      d.right.prediction + mark(d.right.right))
    return Group(table, Text(f"{count} samples answered differently", style="dim"))


def print_renderable(console: Console, renderable: Any) -> None:
    console.print(renderable)
