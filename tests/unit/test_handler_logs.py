"""What the operator logs per watch event: nothing when a watch handler succeeds."""

from __future__ import annotations

import logging

from evaluation_operator.handlers import HandlerSuccessFilter


def record(message: str, level: int = logging.INFO) -> logging.LogRecord:
    return logging.LogRecord("kopf.objects", level, __file__, 1, message, None, None)


def test_watch_handler_successes_are_dropped_and_everything_else_kept() -> None:
    quiet = HandlerSuccessFilter()
    assert not quiet.filter(record("Handler 'task_event' succeeded."))
    # A deletion is rare and worth a line; failures always are.
    assert quiet.filter(record("Handler 'task_deleted' succeeded."))
    assert quiet.filter(record("Handler 'task_event' failed with an exception. Will retry.",
                               logging.ERROR))
