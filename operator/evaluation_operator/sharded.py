"""A sharded run (spec.parallelism N > 1): an Indexed Job of N pods, then a merge Job.

Pure functions. The shards' Job is assessed with the rules of status.py (an index failing
for good fails the task; a Job complete means every index succeeded), then the merge Job
with the same rules: its pod's termination message carries the scores, as a one-pod run's
does. Between the two the task is `Merging`. `status.shards` counts the shards.
"""

from __future__ import annotations

import dataclasses
import datetime
from collections.abc import Mapping
from typing import Any

from evaluation_operator.states import Reason
from evaluation_operator.status import Assessment, TaskContext, assess


def count_indexes(ranges: str | None) -> int:
    """How many indexes a Job's `completedIndexes`/`failedIndexes` ("0-2,4") names."""
    total = 0
    for part in (ranges or "").split(","):
        if not part.strip():
            continue
        low, _, high = part.partition("-")
        try:
            total += (int(high) - int(low) + 1) if high else 1
        except ValueError:
            continue
    return total


def merge_state(merge: Assessment | None) -> str:
    if merge is None:
        return "Pending"
    if merge.reason is Reason.SUCCEEDED:
        return "Succeeded"
    if merge.phase.terminal:
        return "Failed"
    return "Running" if merge.running else "Pending"


def shards_field(job: Mapping[str, Any] | None, total: int, previous: Mapping[str, Any],
                 merge: Assessment | None = None) -> dict[str, Any]:
    """status.shards from the shards' Job (the last known counts once it is gone)."""
    if job is None:
        done, failed = int(previous.get("done") or 0), int(previous.get("failed") or 0)
    else:
        status = job.get("status") or {}
        done = min(total, count_indexes(status.get("completedIndexes")))
        failed = int(status.get("failed") or 0)
    field: dict[str, Any] = {"total": total, "done": done, "failed": failed,
                             "text": f"{done}/{total}"}
    if done == total:
        field["merge"] = merge_state(merge)
    return field


def all_answered(previous_status: Mapping[str, Any]) -> bool:
    shards = previous_status.get("shards") or {}
    return bool(shards.get("total")) and shards.get("done") == shards.get("total")


def assess_sharded(job: dict[str, Any] | None, pods: list[dict[str, Any]],
                   merge_job: dict[str, Any] | None, merge_pods: list[dict[str, Any]],
                   ctx: TaskContext, merge_name: str, previous_status: Mapping[str, Any],
                   now: datetime.datetime | None = None) -> Assessment | None:
    """What is going on in a sharded run; None: nothing to say yet (no Job seen)."""
    previous = previous_status.get("shards") or {}
    if merge_job is not None:
        merge_ctx = dataclasses.replace(ctx, job_name=merge_name, gpus=0, shards=1)
        merged = assess(merge_job, merge_pods, merge_ctx, now=now)
        shards = shards_field(job, ctx.shards, previous, merged)
        shards.update(done=ctx.shards, text=f"{ctx.shards}/{ctx.shards}")
        if merged.phase.terminal:
            failed = "" if merged.reason is Reason.SUCCEEDED else "The merge of the shards "\
                "failed: "
            return dataclasses.replace(merged, message=failed + merged.message, shards=shards)
        return Assessment(
            Reason.MERGING, f"All {ctx.shards} shards answered; merging and scoring their "
            f"answers (Job {merge_name}): {merged.message}", scheduled=True,
            running=merged.running, shards=shards)
    if job is None:
        if all_answered(previous_status):  # the shards' Job is gone (its TTL): merge
            return Assessment(Reason.MERGING, f"All {ctx.shards} shards answered; starting "
                              f"the merge (Job {merge_name}).", scheduled=True,
                              shards=dict(previous), start_merge=True)
        return None
    found = assess(job, pods, ctx, now=now)
    shards = shards_field(job, ctx.shards, previous)
    if found.reason is Reason.SUCCEEDED:
        shards.update(done=ctx.shards, text=f"{ctx.shards}/{ctx.shards}", merge="Pending")
        return Assessment(Reason.MERGING, f"All {ctx.shards} shards answered; starting the "
                          f"merge (Job {merge_name}).", scheduled=True, shards=shards,
                          start_time=found.start_time, start_merge=True)
    if not found.phase.terminal:
        found = dataclasses.replace(
            found, message=f"{found.message} Shards: {shards['done']} of {ctx.shards} done.")
    return dataclasses.replace(found, shards=shards)
