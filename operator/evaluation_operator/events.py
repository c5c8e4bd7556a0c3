"""Kubernetes Events on tasks: what `kubectl describe evaluationtask` shows."""

from __future__ import annotations

import logging
from typing import Any

import kopf

from evaluation_operator import naming

log = logging.getLogger(__name__)
MAX_MESSAGE = 1024


def post(task: dict[str, Any], type_: str, reason: str, message: str) -> None:
    """Best effort: the status carries the same information, so a lost event is harmless.

    Kopf posts through its own queue, which exists inside handlers (including the threads
    that run sync handlers); elsewhere this only logs.
    """
    reference = {"apiVersion": task.get("apiVersion", f"{naming.GROUP}/{naming.VERSION}"),
                 "kind": task.get("kind", naming.KIND), "metadata": task["metadata"]}
    try:
        kopf.event(kopf.Body(reference),  # type: ignore[arg-type]
                   type=type_, reason=reason, message=message[:MAX_MESSAGE])
    except Exception:
        log.debug("could not post event %s for %s", reason, task["metadata"].get("name"))


def normal(task: dict[str, Any], reason: str, message: str) -> None:
    post(task, "Normal", reason, message)


def warning(task: dict[str, Any], reason: str, message: str) -> None:
    post(task, "Warning", reason, message)
