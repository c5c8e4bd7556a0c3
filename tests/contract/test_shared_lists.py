"""Lists both sides share: one set of names in the runner, the operator, the CRD and the docs.

The runner's names are the source (it is the side that implements them); every other copy
must equal them, and both parsers must accept exactly them.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from evaluation_operator import manifests, spec, status
from evaluation_operator.config import OperatorSettings
from evaluation_operator.runner_output import BenchmarkState, RunnerReason
from evaluation_runner import config as runner_config
from evaluation_runner import errors
from evaluation_runner import progress as runner_progress
from evaluation_runner.errors import ConfigurationError
from evaluation_runner.metrics import REGISTRY

ROOT = Path(__file__).resolve().parents[2]
CONTRACT = (ROOT / "docs" / "runner-contract.md").read_text()
CRDS = [ROOT / "crds" / "evaluation.dev_evaluationtasks.yaml",
        ROOT / "charts" / "evaluation-operator" / "crds" / "evaluation.dev_evaluationtasks.yaml"]


def benchmark_schema(path: Path) -> dict[str, Any]:
    crd = yaml.safe_load(path.read_text())
    root = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    items: dict[str, Any] = root["properties"]["spec"]["properties"]["benchmarks"]["items"]
    return items


def framework_enum(path: Path) -> list[str]:
    crd = yaml.safe_load(path.read_text())
    root = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    enum: list[str] = root["properties"]["spec"]["properties"]["framework"]["properties"][
        "name"]["enum"]
    return enum


def contract_list(line_start: str) -> list[str]:
    """The backticked names in docs/runner-contract.md after `line_start`, up to the end of
    that sentence or the first parenthesis."""
    text = CONTRACT[CONTRACT.index(line_start) + len(line_start):]
    end = re.search(r"\.\s|\s\(", text)
    assert end, line_start
    return re.findall(r"`([^`]+)`", text[:end.start()])


def runner_accepts(**benchmark: Any) -> bool:
    raw = {"version": 1, "model": {"name": "m", "endpoint": {"url": "http://m/v1",
                                                             "api": "completions"}},
           "benchmarks": [{"name": "b", "dataset": {"uri": "s3://data/b.jsonl"},
                           "task": "generation", "metrics": ["exact-match"], **benchmark}],
           "output": {"s3": {"bucket": "r", "prefix": "p/"}}}
    try:
        runner_config.parse_config(raw)
    except ConfigurationError:
        return False
    return True


def operator_accepts(**benchmark: Any) -> bool:
    raw = {"model": {"name": "m", "endpoint": {"url": "http://m/v1", "api": "completions"}},
           "benchmarks": [{"name": "b", "dataset": {"uri": "s3://data/b.jsonl"},
                           "task": "generation", "metrics": ["exact-match"], **benchmark}]}
    try:
        spec.parse_task_spec(raw, OperatorSettings(s3_bucket="r"))
    except spec.SpecError:
        return False
    return True


@pytest.mark.parametrize("crd", CRDS, ids=["crds", "chart"])
def test_metrics_are_one_list(crd: Path) -> None:
    metrics = list(runner_config.METRICS)
    assert benchmark_schema(crd)["properties"]["metrics"]["items"]["enum"] == metrics
    assert list(spec.METRICS) == metrics
    assert contract_list("- `metrics`: from") == metrics


@pytest.mark.parametrize("crd", CRDS, ids=["crds", "chart"])
def test_task_types_are_one_list(crd: Path) -> None:
    tasks = list(runner_config.TASK_TYPES)
    assert benchmark_schema(crd)["properties"]["task"]["enum"] == tasks
    assert list(spec.TASK_TYPES) == tasks
    assert contract_list("- `task`:") == tasks


@pytest.mark.parametrize("crd", CRDS, ids=["crds", "chart"])
def test_frameworks_are_one_list(crd: Path) -> None:
    assert framework_enum(crd) == list(runner_config.FRAMEWORKS)


def test_both_parsers_accept_every_metric_and_task_type_and_nothing_else() -> None:
    for metric in runner_config.METRICS:
        for task in REGISTRY[metric].tasks:  # the runner's registry: where a metric applies
            assert runner_accepts(task=task, metrics=[metric]), (metric, task)
            assert operator_accepts(task=task, metrics=[metric]), (metric, task)
    for task in runner_config.TASK_TYPES:
        assert runner_accepts(task=task) and operator_accepts(task=task), task
    assert not runner_accepts(metrics=["bleurt"]) and not operator_accepts(metrics=["bleurt"])
    assert not runner_accepts(task="ranking") and not operator_accepts(task="ranking")


def test_failure_reasons_are_one_list() -> None:
    reasons = list(errors.REASONS)
    assert contract_list("`reason` is one of") == reasons
    assert [r.value for r in RunnerReason] == reasons  # what the operator's parser knows
    assert {errors.ConfigurationError.reason, errors.RunnerError.reason} <= set(reasons)
    # Every retried reason gets an operator hint saying what to check; no hint is stale.
    retried = set(reasons) - {"ConfigurationError", "RunnerError"}
    assert set(status.RUNNER_REASON_HINTS) == retried
    with pytest.raises(ValueError, match="not a runner failure reason"):
        errors.TransientError("x", reason="SomethingNew")


def test_exit_codes_are_one_list() -> None:
    assert manifests.EXIT_CONFIGURATION_ERROR == errors.EXIT_CONFIGURATION
    assert manifests.EXIT_TRANSIENT_ERROR == errors.EXIT_TRANSIENT
    table = dict(re.findall(r"^\| (\d+) \| ([a-z]+)", CONTRACT, re.M))
    assert table == {str(errors.EXIT_OK): "success",
                     str(errors.EXIT_CONFIGURATION): "configuration",
                     str(errors.EXIT_TRANSIENT): "transient"}


def test_the_status_points_at_the_runners_bundle_and_log() -> None:
    """status.results.bundle and status.results.log name the keys the runner writes."""
    from evaluation_operator.s3 import ResultsLocation
    from evaluation_runner import layout

    location = ResultsLocation("eval-results", "runs/team-a/t/uid/")
    assert location.bundle_uri == location.uri + layout.RESULTS_ZIP
    assert location.log_uri == location.uri + layout.RUNNER_LOG


def _crd_root(path: Path) -> dict[str, Any]:
    root: dict[str, Any] = yaml.safe_load(path.read_text())["spec"]["versions"][0]["schema"][
        "openAPIV3Schema"]
    return root


@pytest.mark.parametrize("crd", CRDS, ids=["crds", "chart"])
def test_failure_policies_are_one_list(crd: Path) -> None:
    policies = list(runner_config.FAILURE_POLICIES)
    field = _crd_root(crd)["properties"]["spec"]["properties"]["failurePolicy"]
    assert field["enum"] == policies and list(spec.FAILURE_POLICIES) == policies
    assert field["default"] == spec.CONTINUE == runner_config.CONTINUE
    assert contract_list("- `failurePolicy`:") == policies
    raw = {"model": {"name": "m", "endpoint": {"url": "http://m/v1"}}, "failurePolicy": "Maybe",
           "benchmarks": [{"name": "b", "dataset": {"uri": "s3://data/b.jsonl"},
                           "task": "generation", "metrics": ["exact-match"]}]}
    with pytest.raises(spec.SpecError, match=r"spec\.failurePolicy"):
        spec.parse_task_spec(raw, OperatorSettings(s3_bucket="r"))


@pytest.mark.parametrize("crd", CRDS, ids=["crds", "chart"])
def test_benchmark_states_are_one_list(crd: Path) -> None:
    states = [s.value for s in runner_progress.BenchmarkState]
    status = _crd_root(crd)["properties"]["status"]["properties"]
    assert status["benchmarks"]["items"]["properties"]["state"]["enum"] == states
    assert [s.value for s in BenchmarkState] == states
    assert contract_list("Per benchmark, in the spec's order: `state` is") == states


def test_the_console_offers_the_bundle_of_exactly_the_failures_that_upload_one() -> None:
    from evaluation_console.model import BUNDLE_REASONS
    from evaluation_operator.states import Phase, Reason

    assert [Reason(r) for r in BUNDLE_REASONS] == [Reason.PARTIALLY_FAILED]
    assert all(Reason(r).phase is Phase.FAILED for r in BUNDLE_REASONS)
