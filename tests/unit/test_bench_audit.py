"""bench/operator_scale.py's creation window, timed by the API server's audit log."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


def bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("operator_scale",
                                                  ROOT / "bench" / "operator_scale.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("operator_scale", module)
    spec.loader.exec_module(module)
    return module


def entry(agent: str, verb: str, resource: str, name: str, received: str, done: str,
          code: int = 201) -> str:
    return json.dumps({
        "verb": verb, "userAgent": agent, "objectRef": {"resource": resource, "name": name},
        "requestReceivedTimestamp": f"2026-11-30T12:00:{received}Z",
        "stageTimestamp": f"2026-11-30T12:00:{done}Z", "responseStatus": {"code": code}})


def test_the_span_runs_from_the_bench_s_first_create_to_the_last_job_created(
        tmp_path: Path) -> None:
    scale = bench()
    op, bench_agent = "evaluation-operator/0.1", f"{scale.AGENT}/1"
    lines = [
        entry("kube-controller-manager/v1.37", "create", "pods", "p", "00.500000", "00.600000"),
        entry(bench_agent, "create", "evaluationtasks", "t-0", "01.000000", "01.010000"),
        entry(bench_agent, "create", "evaluationtasks", "t-1", "01.100000", "01.120000"),
        entry(op, "create", "configmaps", "t-0-config", "01.200000", "01.250000"),
        entry(op, "create", "jobs", "t-0-eval", "01.300000", "01.350000"),
        entry(op, "create", "jobs", "t-1-eval", "02.300000", "03.456000"),
        entry(op, "create", "jobs", "t-1-eval", "04.000000", "04.100000", code=409),
        entry("kube-controller-manager/v1.37", "create", "pods", "p2", "05.0", "05.100000"),
    ]
    audit = tmp_path / "audit.log"
    audit.write_text("\n".join(lines) + "\n")
    window: dict[str, Any] = scale.audit_window(audit, "2026-11-30T12:00:00",
                                                "2026-11-30T12:01:00")
    # A refused duplicate and the controller manager's later pods do not end it.
    assert window["span_seconds"] == 2.456
    assert window["after_task_created"]["create jobs"][0] == 2


def test_jobs_created_counts_new_jobs_in_the_namespace_as_the_log_grows(tmp_path: Path) -> None:
    scale = bench()
    op = "evaluation-operator/0.1"

    def job(name: str, namespace: str, code: int = 201, verb: str = "create") -> str:
        return json.dumps({"verb": verb, "userAgent": op, "responseStatus": {"code": code},
                           "objectRef": {"resource": "jobs", "namespace": namespace,
                                         "name": name}}, separators=(",", ":"))

    audit = tmp_path / "audit.log"
    audit.write_text(job("old", "bench-op") + "\n")
    counter = scale.JobsCreated(audit, "bench-op")  # what is there already does not count
    with audit.open("a") as log_file:
        log_file.write("\n".join([
            job("t-0-eval", "bench-op"),
            job("t-0-eval", "bench-op", code=409),  # a duplicate, refused
            job("b-0-eval", "bench-bare"),
            job("t-0-eval", "bench-op", verb="patch"),
        ]) + "\n" + job("t-1-eval", "bench-op")[:30])  # a line the server is still writing
    assert counter.poll() == 1
    with audit.open("a") as log_file:
        log_file.write(job("t-1-eval", "bench-op")[30:] + "\n")
    assert counter.poll() == 2


def test_jobs_created_starts_at_the_end_of_a_long_log(tmp_path: Path) -> None:
    scale = bench()
    line = json.dumps({"verb": "create", "responseStatus": {"code": 201},
                       "objectRef": {"resource": "jobs", "namespace": "bench-op", "name": "j"}},
                      separators=(",", ":")) + "\n"
    audit = tmp_path / "audit.log"
    audit.write_text(line * (200_000 // len(line)))  # beyond the 64 KiB looked at
    counter = scale.JobsCreated(audit, "bench-op")
    assert counter.poll() == 0
    with audit.open("a") as log_file:
        log_file.write(line)
    assert counter.poll() == 1


def test_the_window_counts_reads_by_client_and_leaves_watches_out(tmp_path: Path) -> None:
    scale = bench()
    lines = [
        entry("kube-controller-manager/v1.37", "get", "evaluationtasks", "t-0", "01.0", "01.1"),
        entry("kube-controller-manager/v1.37", "get", "evaluationtasks", "t-1", "01.0", "01.1"),
        entry("evaluation-operator/0.1", "list", "pods", "", "01.0", "01.1"),
        entry("evaluation-operator/0.1", "watch", "pods", "", "01.0", "59.0"),
    ]
    audit = tmp_path / "audit.log"
    audit.write_text("\n".join(lines) + "\n")
    window = scale.audit_window(audit, "2026-11-30T12:00:00", "2026-11-30T12:01:00")
    assert window["reads"] == {"controller manager: get evaluationtasks": 2,
                               "operator: list pods": 1}
    assert window["server_seconds"] == {}


def test_pairs_report_gives_every_pair_s_ratio_and_their_median() -> None:
    scale = bench()

    def pair(operator: float, bare: float) -> dict[str, Any]:
        window: dict[str, Any] = {"server_seconds": {}, "after_task_created": {}, "reads": {}}
        return {"creation_window": {**window, "span_seconds": operator},
                "bare_window": {**window, "span_seconds": bare}, "operator_cpu_split": {}}

    figures = {**pair(9.0, 4.0), "pairs": [pair(8.0, 5.0), pair(7.0, 4.0)]}
    lines = scale.pairs_report(figures)
    assert "  1: 9.00 / 4.00 s: 2.25x" in lines
    assert "  3: 7.00 / 4.00 s: 1.75x" in lines
    assert "  median of 3: 1.75x (target <= 2x); 2 of 3 at or under 2x" in lines
    assert scale.pairs_report(pair(9.0, 4.0)) == []  # one pair: nothing more to say
