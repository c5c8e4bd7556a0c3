"""The console's pure parts: the read model, samples, comparison, rendering, web helpers."""

from __future__ import annotations

import io
import json
import zipfile
from typing import Any

import pytest
import yaml
from evaluation_console import render
from evaluation_console.compare import compare
from evaluation_console.errors import ConsoleError
from evaluation_console.model import Phase, age, task_details, task_row, to_plain
from evaluation_console.reader import split_ref
from evaluation_console.samples import Verdict, differences, judge, page, parse_lines
from evaluation_console.web.server import csrf_token, filter_rows
from evaluation_runner import layout
from evaluation_runner.bundle import (
    BenchmarkFailure,
    BenchmarkResult,
    bundle_files,
    summary_document,
    zip_bundle,
)
from evaluation_runner.metrics import MetricValue
from rich.console import Console


def task(name: str = "t1", phase: str | None = "Completed", **status: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "metadata": {"name": name, "namespace": "team-a", "uid": "0b6c-1",
                     "creationTimestamp": "2026-11-29T10:00:00Z"},
        "spec": {"model": {"name": "tiny", "endpoint": {"url": "http://m/v1"}},
                 "benchmarks": [{"name": "arc", "dataset": {"uri": "s3://d/arc.jsonl"}}]},
        "status": {"phase": phase, **status} if phase else {},
    }
    return body


def summary(arc: float, arc_se: float | None, bleu: float) -> dict[str, Any]:
    return {
        "overallScore": (arc + bleu / 100) / 2,
        "benchmarks": [
            {"name": "arc", "task": "multiple-choice", "primaryMetric": "accuracy",
             "score": arc, "metrics": {"accuracy": arc}, "stderr": {"accuracy": arc_se},
             "samples": 100, "weight": 1.0},
            {"name": "wmt", "task": "generation", "primaryMetric": "bleu", "score": bleu / 100,
             "metrics": {"bleu": bleu, "exact-match": 0.25},
             "stderr": {"bleu": None, "exact-match": 0.1}, "samples": 4, "weight": 1.0}],
        "datasets": [{"name": "arc", "uri": "s3://d/arc.jsonl", "sha256": "ab" * 32,
                      "rows": 120, "samples": 100}],
        "framework": {"name": "builtin", "version": "0.1.0"},
        "parameters": {"temperature": 0},
        "model": {"name": "tiny", "endpoint": "http://m/v1"},
        "timings": {"startedAt": "a", "finishedAt": "b", "seconds": 3.5},
    }


def test_row_reads_status_and_tolerates_a_task_without_status() -> None:
    row = task_row(task(overallScore=0.5, progress={"samplesDone": 3, "samplesTotal": 4},
                        results={"uri": "s3://b/p/team-a/t1/0b6c-1/"}))
    assert (row.key, row.phase, row.overall, row.model) == ("team-a/t1", Phase.COMPLETED, 0.5,
                                                           "tiny")
    assert row.progress.text == "3/4" and row.progress.fraction == 0.75
    fresh = task_row(task(phase=None))
    assert fresh.phase is Phase.PENDING and fresh.overall is None and fresh.progress.text == ""
    # Values a broken status could hold never reach the tables as numbers.
    assert task_row(task(overallScore="high")).overall is None
    assert task_row(task(overallScore=float("nan"))).overall is None


def test_details_prefer_the_bundle_and_fall_back_to_status() -> None:
    status_only = task_details(task(overallScore=0.6, benchmarks=[
        {"name": "arc", "score": 0.6, "primaryMetric": "accuracy",
         "metrics": {"accuracy": 0.6}, "samples": 5}]), None, "no S3")
    assert status_only.summary_source == "status" and status_only.results_note == "no S3"
    assert status_only.benchmarks[0].metrics[0].stderr is None
    assert status_only.model == {"name": "tiny", "endpoint": "http://m/v1"}
    full = task_details(task(overallScore=0.6), summary(0.6, 0.05, 30.0))
    assert full.summary_source == "summary.json"
    wmt = full.benchmarks[1]
    assert [(m.name, m.value, m.stderr, m.primary) for m in wmt.metrics] == [
        ("bleu", 30.0, None, True), ("exact-match", 0.25, 0.1, False)]
    assert full.datasets[0].sha256 == "ab" * 32 and full.datasets[0].rows == 120
    assert full.framework["version"] == "0.1.0" and full.timings["seconds"] == 3.5


def test_compare_marks_deltas_beyond_the_combined_standard_error() -> None:
    base = task_details(task("a", overallScore=0.5), summary(0.50, 0.03, 30.0))
    better = task_details(task("b", overallScore=0.6), summary(0.60, 0.04, 31.0))
    close = task_details(task("c", overallScore=0.52), summary(0.53, 0.04, 30.0))
    result = compare([base, better, close])
    arc, wmt = result.rows
    assert arc.cells[0].delta is None
    assert arc.cells[1].delta == pytest.approx(0.10)
    assert arc.cells[1].combined_stderr == pytest.approx(0.05)  # sqrt(0.03² + 0.04²)
    assert arc.cells[1].beyond_noise is True
    assert arc.cells[2].beyond_noise is False  # 0.03 < 0.05
    assert wmt.cells[1].delta == pytest.approx(0.01) and wmt.cells[1].beyond_noise is None
    assert result.overall[1].delta == pytest.approx(0.1)


def test_compare_lists_benchmarks_that_only_one_task_ran() -> None:
    one = task_details(task("a"), summary(0.5, 0.1, 10))
    other_summary = summary(0.5, 0.1, 10)
    other_summary["benchmarks"] = other_summary["benchmarks"][:1]
    other = task_details(task("b"), other_summary)
    rows = compare([other, one]).rows
    assert [r.benchmark for r in rows] == ["arc", "wmt"]
    assert rows[1].cells[0].score is None and rows[1].cells[1].delta is None


def sample_lines(count: int, right_every: int = 3) -> list[bytes]:
    return [json.dumps({"index": i, "input": f"question {i}", "prediction": "A" if
                        i % right_every == 0 else "B", "reference": "A",
                        "scores": {"accuracy": float(i % right_every == 0)}}).encode()
            for i in range(count)]


def test_samples_judge_page_and_search_through_ten_thousand() -> None:
    samples = list(parse_lines([*sample_lines(12_000), b"not json", b""], "accuracy"))
    assert len(samples) == 12_000
    wrong = page(samples, Verdict.WRONG, offset=7_950, limit=50)
    assert wrong.total == 12_000 and wrong.matched == 8_000
    assert len(wrong.samples) == 50 and not wrong.has_next
    assert all(s.right is False for s in wrong.samples)
    found = page(samples, Verdict.RIGHT, grep="QUESTION 999")
    assert [s.index for s in found.samples] == [999, 9990, 9993, 9996, 9999]


def test_judging_falls_back_when_the_primary_metric_is_corpus_level() -> None:
    assert judge({"exact-match": 1.0, "rouge-l": 0.2}, "bleu") is True
    assert judge({"rouge-l": 0.4}, "bleu") is False
    assert judge({}, "bleu") is None


def test_differences_join_samples_by_index() -> None:
    left = list(parse_lines(sample_lines(9), "accuracy"))
    right = list(parse_lines(sample_lines(9, right_every=2), "accuracy"))
    diffs, count = differences(left, right, limit=2)
    assert count == 4  # indexes 2, 3, 4 and 8; elsewhere both said the same
    assert [d.index for d in diffs] == [2, 3]
    assert diffs[0].left.prediction == "B" and diffs[0].right.prediction == "A"


def test_json_and_yaml_output_carry_the_same_document() -> None:
    row = task_row(task(overallScore=0.25))
    as_json = json.loads(render.dump([row], "json"))
    as_yaml = yaml.safe_load(render.dump([row], "yaml"))
    assert as_json == as_yaml == [to_plain(row)]
    assert as_json[0]["phase"] == "Completed" and as_json[0]["key"] == "team-a/t1"


def test_task_references_and_ages() -> None:
    assert split_ref("t1", "dflt") == ("dflt", "t1")
    assert split_ref("team-b/t1", "dflt") == ("team-b", "t1")
    with pytest.raises(ConsoleError, match="not a task name"):
        split_ref("team-b/", "dflt")
    import datetime

    now = datetime.datetime(2026, 11, 29, 13, 0, tzinfo=datetime.UTC)
    assert age("2026-11-29T10:00:00Z", now) == "3h"
    assert age("2026-11-29T12:59:15Z", now) == "45s"
    assert age("garbage", now) == ""


def test_web_filters_and_csrf_token() -> None:
    rows = [task_row(task("a", "Completed")), task_row(task("b", "Failed"))]
    assert [r.name for r in filter_rows(rows, "Failed", "")] == ["b"]
    assert filter_rows(rows, "", "TIN") == rows
    assert filter_rows(rows, "", "llama") == []
    assert csrf_token("x") == csrf_token("x") != csrf_token("y")


def test_bundle_names_come_from_one_list() -> None:
    """The runner writes exactly the keys the console reads (evaluation_runner.layout)."""
    result = BenchmarkResult(name="arc", task="multiple-choice", primary_metric="accuracy",
                             score=1.0, weight=1.0, metrics={"accuracy": MetricValue(1, 0, 1)},
                             samples=[{"index": 0}], dataset={})
    files = bundle_files([result], summary_document([result], 1.0, {}))
    assert set(files) == {layout.SUMMARY_JSON, layout.SUMMARY_CSV, layout.metrics_key("arc"),
                          layout.samples_key("arc")}
    names = zipfile.ZipFile(io.BytesIO(zip_bundle(files))).namelist()
    assert sorted(names) == sorted(files)


def test_metric_scales_come_from_the_runner() -> None:
    from evaluation_console.model import metric_scale

    assert metric_scale("bleu") == metric_scale("chrf") == 100.0
    assert metric_scale("accuracy") == metric_scale("rouge-l") == 1.0
    assert metric_scale("not-a-metric") == 1.0


def test_a_partially_failed_task_offers_its_bundle_and_shows_what_failed() -> None:
    partial = task(phase="Failed", reason="PartiallyFailed", overallScore=0.6)
    assert task_row(partial).has_bundle and task_row(task()).has_bundle
    assert not task_row(task(phase="Failed", reason="RunnerFailed")).has_bundle
    assert not task_row(task(phase="Evaluating", reason="PartiallyFailed")).has_bundle
    arc = BenchmarkResult(name="arc", task="multiple-choice", primary_metric="accuracy",
                          score=0.6, weight=1.0,
                          metrics={"accuracy": MetricValue(0.6, 0.05, 5)}, samples=[],
                          dataset={"uri": "s3://d/arc.jsonl", "sha256": "ab", "rows": 5,
                                   "samples": 5, "fewShotExamples": 0})
    lost = BenchmarkFailure(name="lost", task="generation", weight=1.0,
                            error="benchmarks[1].dataset.uri: s3://d/lost.jsonl: NoSuchKey")
    document = summary_document([arc], 0.6, {}, [lost])
    details = task_details(partial, json.loads(json.dumps(document)))
    rows = {b.name: b for b in details.benchmarks}
    assert rows["arc"].score == 0.6 and rows["arc"].error == ""
    assert rows["lost"].score is None and "NoSuchKey" in rows["lost"].error
    shown = io.StringIO()
    Console(file=shown, width=200, color_system=None).print(render.details_view(details))
    assert "failed: benchmarks[1].dataset.uri: s3://d/lost.jsonl: NoSuchKey" in \
        shown.getvalue()
    from_status = task_details(task(phase="Failed", reason="PartiallyFailed", benchmarks=[
        {"name": "lost", "state": "Failed", "error": "NoSuchKey"}]), None)
    assert from_status.benchmarks[0].error == "NoSuchKey"
