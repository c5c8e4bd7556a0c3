"""Events posted by work that runs outside Kopf's handlers (the progress poller and its timers
write statuses too) must reach Kopf's event queue, not be dropped."""

from __future__ import annotations

import asyncio
import contextvars
from typing import Any

import kopf
import pytest
from evaluation_operator import events
from evaluation_operator.config import OperatorSettings
from evaluation_operator.task import Task
from kopf._core.engines import posting


def _task() -> Task:
    return Task.from_body({
        "apiVersion": "evaluation.dev/v1alpha1", "kind": "EvaluationTask",
        "metadata": {"name": "t", "namespace": "team-a", "uid": "u-1", "generation": 1},
        "spec": {"model": {"name": "m", "endpoint": {"url": "http://m/v1"}},
                 "benchmarks": [{"name": "b", "dataset": {"uri": "s3://d/b.jsonl"},
                                 "task": "generation", "metrics": ["exact-match"]}]},
    }, OperatorSettings(s3_bucket="eval-results"))


@pytest.fixture(autouse=True)
def no_remembered_context(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(events, "_handler_context", None)


def _posted_outside_a_handler(remember: bool) -> list[Any]:
    async def scenario() -> list[Any]:
        queue: asyncio.Queue[Any] = asyncio.Queue()

        def handler() -> None:  # what Kopf sets before it calls a handler
            posting.event_queue_var.set(queue)
            posting.event_queue_loop_var.set(asyncio.get_running_loop())
            posting.settings_var.set(kopf.OperatorSettings())
            if remember:
                events.remember_handler_context()

        contextvars.copy_context().run(handler)
        events.warning(_task(), "PartiallyFailed", "1 of 2 benchmarks failed")
        await asyncio.sleep(0)
        return [queue.get_nowait() for _ in range(queue.qsize())]

    return asyncio.run(scenario())


def test_an_event_from_outside_a_handler_reaches_kopfs_queue() -> None:
    [event] = _posted_outside_a_handler(remember=True)
    assert (event.type, event.reason, event.ref["name"]) == ("Warning", "PartiallyFailed", "t")


def test_without_a_handler_ever_seen_the_event_is_dropped_not_raised() -> None:
    assert _posted_outside_a_handler(remember=False) == []
