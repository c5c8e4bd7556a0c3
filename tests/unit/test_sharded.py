"""spec.parallelism: the Indexed Job, the merge Job, and a sharded run's status (issue 14)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from evaluation_operator import naming
from evaluation_operator.manifests import build_job, build_merge_job
from evaluation_operator.runner_config import build_runner_config
from evaluation_operator.s3 import results_location
from evaluation_operator.sharded import assess_sharded, count_indexes
from evaluation_operator.spec import SpecError, parse_task_spec
from evaluation_operator.states import Phase, Reason
from evaluation_operator.status import TaskContext
from evaluation_operator.task import Task
from evaluation_operator.world import World, compact_job, compact_pod

from tests.unit.test_manifests import SETTINGS, UID, task

CTX = TaskContext(job_name="t-eval", timeout="2h", retries=2, gpus=1,
                  gpu_resource="nvidia.com/gpu", memory="8Gi", shards=4)


def jobs(**spec: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    t = task(**spec)
    parsed = parse_task_spec(t["spec"], SETTINGS)
    owner = Task.from_body(t, SETTINGS)
    return build_job(owner, parsed, SETTINGS), build_merge_job(owner, parsed, SETTINGS)


def test_parallelism_makes_an_indexed_job_with_retries_per_index() -> None:
    shards, merge = jobs(parallelism=4, retries=3, resources={"gpu": 2},
                         scheduling={"queueName": "gpus"})
    spec = shards["spec"]
    assert (spec["completionMode"], spec["completions"], spec["parallelism"]) == (
        "Indexed", 4, 4)
    assert spec["backoffLimitPerIndex"] == 3 and spec["maxFailedIndexes"] == 0
    assert "backoffLimit" not in spec
    actions = {r["action"] for r in spec["podFailurePolicy"]["rules"]}
    assert actions == {"FailJob", "Ignore"}
    container = spec["template"]["spec"]["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "2"  # per shard
    # Kueue admits the shards as one workload: one queue label, the Job suspended.
    assert shards["metadata"]["labels"][naming.LABEL_KUEUE_QUEUE] == "gpus"
    assert spec["suspend"] is True
    # The merge: the runner in merge mode, no GPU, outside the queue, told apart by a label.
    assert merge["metadata"]["name"] == "t-merge"
    merge_container = merge["spec"]["template"]["spec"]["containers"][0]
    assert merge_container["args"][-2:] == ["--mode", "merge"]
    assert "nvidia.com/gpu" not in merge_container["resources"]["limits"]
    assert naming.LABEL_KUEUE_QUEUE not in merge["metadata"]["labels"]
    assert "suspend" not in merge["spec"] and "completionMode" not in merge["spec"]
    for labels in (merge["metadata"]["labels"], merge["spec"]["template"]["metadata"]["labels"]):
        assert labels[naming.LABEL_ROLE] == naming.ROLE_MERGE
    assert naming.LABEL_ROLE not in shards["spec"]["template"]["metadata"]["labels"]


def test_parallelism_one_keeps_the_single_pod_job() -> None:
    single, _ = jobs()
    assert "completionMode" not in single["spec"] and single["spec"]["completions"] == 1
    t = task()
    config = build_runner_config(parse_task_spec(t["spec"], SETTINGS), name="t",
                                 namespace="team-a", uid="u",
                                 location=results_location("bucket", "runs", "team-a", "t", UID),
                                 settings=SETTINGS)
    assert "sharding" not in config


def test_the_runner_config_carries_the_shard_count_and_the_runner_accepts_it() -> None:
    from evaluation_runner.config import parse_config

    t = task(parallelism=3)
    config = build_runner_config(parse_task_spec(t["spec"], SETTINGS), name="t",
                                 namespace="team-a", uid="u",
                                 location=results_location("bucket", "runs", "team-a", "t", UID),
                                 settings=SETTINGS)
    assert config["sharding"] == {"count": 3}
    assert parse_config(json.loads(json.dumps(config))).shards == 3


@pytest.mark.parametrize(("value", "needle"), [
    (0, "from 1 to 64"), (65, "from 1 to 64"), ("4", "from 1 to 64"), (True, "from 1 to 64")])
def test_bad_parallelism_names_the_field(value: Any, needle: str) -> None:
    with pytest.raises(SpecError) as error:
        parse_task_spec(task(parallelism=value)["spec"], SETTINGS)
    assert error.value.field == "spec.parallelism" and needle in error.value.message


def test_parallelism_with_lm_eval_is_refused() -> None:
    with pytest.raises(SpecError, match="framework builtin"):
        parse_task_spec(task(parallelism=2, framework={"name": "lm-eval"})["spec"], SETTINGS)


def test_index_ranges_are_counted() -> None:
    assert [count_indexes(x) for x in ("", None, "0", "0-2", "0-2,4", "1,3-5,7")] == [
        0, 0, 1, 3, 4, 5]


# --- status --------------------------------------------------------------------------------

def shards_job(completed: str = "", failed_pods: int = 0,
               conditions: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return compact_job({"metadata": {"name": "t-eval"}, "spec": {"completions": 4},
                        "status": {"completedIndexes": completed, "failed": failed_pods,
                                   "conditions": conditions or []}})


def shard_pod(index: int, phase: str, exit_code: int | None = None,
              message: str = "") -> dict[str, Any]:
    state: dict[str, Any] = ({"terminated": {"exitCode": exit_code, "message": message,
                                             "reason": "Error"}}
                             if exit_code is not None else {"running": {}})
    return compact_pod({
        "metadata": {"name": f"t-eval-{index}-x", "creationTimestamp": f"2026-01-01T00:00:0"
                     f"{index}Z", "labels": {naming.LABEL_COMPLETION_INDEX: str(index)}},
        "spec": {"nodeName": "gpu-node-0"},
        "status": {"phase": phase, "startTime": "2026-01-01T00:00:10Z",
                   "containerStatuses": [{"name": "runner", "state": state}]}})


def test_running_shards_are_counted_and_one_shard_succeeding_is_not_the_run() -> None:
    pods = [shard_pod(0, "Succeeded", 0, '{"v":1,"status":"Succeeded","shard":{}}'),
            *(shard_pod(i, "Running") for i in (1, 2, 3))]
    found = assess_sharded(shards_job("0"), pods, None, [], CTX, "t-merge", {})
    assert found is not None
    assert found.reason is Reason.RUNNING
    assert found.shards == {"total": 4, "done": 1, "failed": 0, "text": "1/4"}
    assert "Shards: 1 of 4 done" in found.message and not found.start_merge


def test_a_failed_shard_being_retried_shows_in_status() -> None:
    pods = [shard_pod(0, "Running"),
            shard_pod(1, "Failed", 75, '{"v":1,"status":"Failed","reason":"ModelUnreachable",'
                                       '"message":"model down"}'),
            shard_pod(2, "Running"), shard_pod(3, "Running"), shard_pod(4, "Running")]
    found = assess_sharded(shards_job("", failed_pods=1), pods, None, [], CTX, "t-merge", {})
    assert found is not None and found.phase is Phase.EVALUATING
    assert found.shards is not None and found.shards["failed"] == 1
    assert "1 shard attempt(s) failed" in found.message and "model down" in found.message


def test_a_shard_out_of_retries_fails_the_task_and_names_it() -> None:
    failure = {"type": "Failed", "status": "True", "reason": "FailedIndexes",
               "lastTransitionTime": "2026-01-01T01:00:00Z"}
    job = shards_job("0,2-3", failed_pods=3, conditions=[failure])
    job["status"]["failedIndexes"] = "1"
    pods = [shard_pod(1, "Failed", 75, '{"v":1,"status":"Failed","reason":"ModelUnreachable",'
                                       '"message":"model down"}')]
    found = assess_sharded(job, pods, None, [], CTX, "t-merge", {})
    assert found is not None and found.reason is Reason.RETRIES_EXHAUSTED
    assert "Shard(s) 1 of 4" in found.message and "model down" in found.message


def test_all_shards_done_starts_the_merge_and_the_merge_decides() -> None:
    complete = {"type": "Complete", "status": "True"}
    job = shards_job("0-3", conditions=[complete])
    found = assess_sharded(job, [], None, [], CTX, "t-merge", {})
    assert found is not None and found.reason is Reason.MERGING and found.start_merge
    assert found.shards == {"total": 4, "done": 4, "failed": 0, "text": "4/4",
                            "merge": "Pending"}
    merge_job = compact_job({"metadata": {"name": "t-merge", "labels": {
        naming.LABEL_ROLE: naming.ROLE_MERGE}}, "status": {"conditions": [complete]}})
    message = json.dumps({"v": 1, "status": "Succeeded", "overallScore": 0.5,
                          "benchmarks": [{"name": "arc", "score": 0.5}],
                          "results": {"uri": "s3://b/p/", "bundle": "s3://b/p/results.zip"}})
    merge_pod = shard_pod(0, "Succeeded", 0, message)
    done = assess_sharded(job, [], merge_job, [merge_pod], CTX, "t-merge", {})
    assert done is not None and done.reason is Reason.SUCCEEDED and not done.start_merge
    assert done.shards is not None and done.shards["merge"] == "Succeeded"
    # The shards' Job gone by its TTL while the merge runs: still merging, counts kept.
    previous = {"shards": found.shards}
    again = assess_sharded(None, [], None, [], CTX, "t-merge", previous)
    assert again is not None and again.reason is Reason.MERGING and again.start_merge


def test_the_world_tells_the_merge_from_the_shards() -> None:
    merge = compact_job({"metadata": {"name": "t-merge", "labels": {
        naming.LABEL_ROLE: naming.ROLE_MERGE}}})
    shards = shards_job()
    world = World({}, {"u": [merge, shards]}, {})
    assert world.job("u") == shards and world.merge_job("u") == merge
