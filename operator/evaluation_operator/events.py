"""Kubernetes Events on tasks: what `kubectl describe evaluationtask` shows."""

from __future__ import annotations

import logging

import kopf

from evaluation_operator.task import Task

log = logging.getLogger(__name__)
MAX_MESSAGE = 1024


def post(task: Task, type_: str, reason: str, message: str) -> None:
    """Best effort: the status carries the same information, so a lost event is harmless.

    Kopf posts through its own queue, which exists inside handlers and the asyncio tasks they
    start; elsewhere this only logs.
    """
    try:
        kopf.event(kopf.Body(task.reference()),  # type: ignore[arg-type]
                   type=type_, reason=reason, message=message[:MAX_MESSAGE])
    except Exception:
        log.debug("could not post event %s for %s", reason, task.key)


def normal(task: Task, reason: str, message: str) -> None:
    post(task, "Normal", reason, message)


def warning(task: Task, reason: str, message: str) -> None:
    post(task, "Warning", reason, message)
