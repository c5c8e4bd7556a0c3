"""Events on tasks (events.py): posted by the operator's own client, from anywhere in it.

Most of a task's watch events never pass through a Kopf handler (watch_projection.py), so
Kopf's poster, which is reached only from inside one, cannot carry them.
"""

from __future__ import annotations

import asyncio
import datetime
import logging

import pytest
from evaluation_operator import events, naming
from evaluation_operator.config import OperatorSettings
from evaluation_operator.events import Recorder, build_event
from evaluation_operator.kube import Api
from evaluation_operator.task import Task

from tests.unit.test_apiclient import FakeApiServer, api_server, kube, status_body

__all__ = ["api_server"]  # the fixture, used by name
EVENTS = "/api/v1/namespaces/team-a/events"
NOW = datetime.datetime(2026, 11, 30, 12, 0, 5, 250000, tzinfo=datetime.UTC)


def _task() -> Task:
    return Task.from_body({
        "apiVersion": "evaluation.dev/v1alpha1", "kind": "EvaluationTask",
        "metadata": {"name": "t", "namespace": "team-a", "uid": "u-1", "generation": 1},
        "spec": {"model": {"name": "m", "endpoint": {"url": "http://m/v1"}},
                 "benchmarks": [{"name": "b", "dataset": {"uri": "s3://d/b.jsonl"},
                                 "task": "generation", "metrics": ["exact-match"]}]},
    }, OperatorSettings(s3_bucket="eval-results"))


def test_an_event_points_at_its_task_in_the_task_s_namespace() -> None:
    event = build_event(_task(), "Warning", "PartiallyFailed", "x" * 5000, NOW, "op-0")
    assert event["metadata"] == {"generateName": "t.", "namespace": "team-a"}
    # What `kubectl describe evaluationtask t` matches the Event on.
    assert event["involvedObject"] == {
        "apiVersion": f"{naming.GROUP}/{naming.VERSION}", "kind": "EvaluationTask",
        "namespace": "team-a", "name": "t", "uid": "u-1"}
    assert (event["type"], event["reason"]) == ("Warning", "PartiallyFailed")
    assert len(event["message"]) == events.MAX_MESSAGE
    assert event["source"] == {"component": "evaluation-operator"}
    assert (event["reportingComponent"], event["reportingInstance"]) == (
        "evaluation-operator", "op-0")
    assert event["firstTimestamp"] == event["lastTimestamp"] == "2026-11-30T12:00:05Z"


def test_the_recorder_posts_through_the_operators_client_in_the_background(
        api_server: FakeApiServer) -> None:
    api_server.routes["POST", EVENTS] = (201, {"kind": "Event"})

    async def scenario() -> None:
        recorder = Recorder(Api(kube(api_server), 1), instance="op-0")
        recorder.warning(_task(), "PartiallyFailed", "1 of 2 benchmarks failed")
        recorder.normal(_task(), "ResultsPurged", "Deleted 3 object versions")
        await recorder.drain()

    asyncio.run(scenario())
    posted = [s.body for s in api_server.seen if (s.method, s.path) == ("POST", EVENTS)]
    assert [(e["type"], e["reason"], e["message"]) for e in posted] == [
        ("Warning", "PartiallyFailed", "1 of 2 benchmarks failed"),
        ("Normal", "ResultsPurged", "Deleted 3 object versions")]
    assert all(e["kind"] == "Event" and e["involvedObject"]["uid"] == "u-1" for e in posted)


def test_a_refused_event_is_logged_not_raised(api_server: FakeApiServer,
                                              caplog: pytest.LogCaptureFixture) -> None:
    api_server.routes["POST", EVENTS] = (403, status_body(403, "Forbidden", "no events"))

    async def scenario() -> None:
        recorder = Recorder(Api(kube(api_server), 1), instance="op-0")
        recorder.warning(_task(), "PartiallyFailed", "1 of 2 benchmarks failed")
        await recorder.drain()

    with caplog.at_level(logging.DEBUG, logger="evaluation_operator.events"):
        asyncio.run(scenario())
    assert "could not post event PartiallyFailed" in caplog.text


def test_without_an_event_loop_the_event_is_dropped_not_raised(
        api_server: FakeApiServer) -> None:
    Recorder(Api(kube(api_server), 1), instance="op-0").warning(_task(), "X", "y")
    assert api_server.seen == []
