"""Kubernetes Events on tasks: what `kubectl describe evaluationtask` shows."""

from __future__ import annotations

import contextvars
import logging

import kopf

from evaluation_operator.task import Task

log = logging.getLogger(__name__)
MAX_MESSAGE = 1024
# Kopf's event queue is found through context variables that its handlers run with; work the
# handlers start later from elsewhere (the progress poller started at startup, its timers)
# runs without them. A copy of a handler's context, taken once, lets that work post too.
_handler_context: contextvars.Context | None = None


def remember_handler_context() -> None:
    """Called from a watch handler: keep its context (once) for posts made outside one."""
    global _handler_context
    if _handler_context is None:
        _handler_context = contextvars.copy_context()


def post(task: Task, type_: str, reason: str, message: str) -> None:
    """Best effort: the status carries the same information, so a lost event is harmless.

    Kopf posts through its own queue, found through the context of its handlers (and the
    asyncio tasks they start); elsewhere through the handler context remembered above.
    """
    body = kopf.Body(task.reference())  # type: ignore[arg-type]
    try:
        try:
            kopf.event(body, type=type_, reason=reason, message=message[:MAX_MESSAGE])
        except LookupError:  # not inside a handler's context: use the one remembered
            if _handler_context is None:
                raise
            _handler_context.run(kopf.event, body, type=type_, reason=reason,
                                 message=message[:MAX_MESSAGE])
    except Exception:
        log.debug("could not post event %s for %s", reason, task.key, exc_info=True)


def normal(task: Task, reason: str, message: str) -> None:
    post(task, "Normal", reason, message)


def warning(task: Task, reason: str, message: str) -> None:
    post(task, "Warning", reason, message)
