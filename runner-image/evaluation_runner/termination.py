"""The compact summary in /dev/termination-log, which the kubelet caps at 4 KiB."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

LIMIT = 4096


def encode(message: dict[str, Any]) -> bytes:
    return json.dumps(message, separators=(",", ":"), ensure_ascii=False).encode()


SUCCEEDED = "Succeeded"
# The bundle is uploaded but some benchmarks failed (failurePolicy: Continue); exit code 0.
PARTIALLY_FAILED = "PartiallyFailed"
FAILED = "Failed"
# What a truncated message leaves out of each benchmark first (summary.json has it all).
DROPPED_FIRST = ("metrics", "startedAt", "finishedAt")


def success_message(overall: float, benchmarks: list[dict[str, Any]], uri: str,
                    bundle: str, log: str | None = None, *, partial: bool = False) -> bytes:
    """Drop per-benchmark metrics (and times) first, then the benchmarks, to stay within
    the limit.

    `partial`: some `benchmarks` are `{"name", "state": "Failed", "error"}`; the message says
    `PartiallyFailed` and `overallScore` is over the others."""
    results = {"uri": uri, "bundle": bundle, **({"log": log} if log else {})}
    message: dict[str, Any] = {"v": 1, "status": PARTIALLY_FAILED if partial else SUCCEEDED,
                               **({"partial": True} if partial else {}),
                               "overallScore": overall, "benchmarks": benchmarks,
                               "results": results}
    data = encode(message)
    if len(data) <= LIMIT:
        return data
    message["truncated"] = True
    message["benchmarks"] = [{k: v for k, v in b.items() if k not in DROPPED_FIRST}
                             for b in benchmarks]
    data = encode(message)
    if len(data) <= LIMIT:
        return data
    del message["benchmarks"]
    return encode(message)


def failure_message(reason: str, message: str, log: str | None = None) -> bytes:
    """`log`: where runner.log was uploaded, when it could be."""
    text = message
    extra = {"results": {"log": log}} if log else {}
    while True:
        data = encode({"v": 1, "status": FAILED, "reason": reason, "message": text[:1024],
                       **extra})
        if len(data) <= LIMIT:
            return data
        text = text[: len(text) // 2]


def write(path: Path, data: bytes) -> None:
    # Outside a pod the log may not be writable; the exit code still tells the story.
    with contextlib.suppress(OSError):
        path.write_bytes(data)
