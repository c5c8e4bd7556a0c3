"""A 4-shard task as real pods on the real node (issue 14): the Indexed Job's pods and the
merge Job run the runner image; the scores equal the same task's on one pod, and the wall
time of both is recorded (printed with the other timings; bench/sharded_wall_time.py).

The scripted model answers each request after `DELAY_SECONDS`, as a served model would take
time per request; the runner's concurrency is the same in both tasks, so what four pods gain
is four times the requests in flight, and what they cost is pod start-up and the merge.
"""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from devcluster.cluster import Cluster
from devcluster.fake_llm import FakeLLM

from tests.e2e.support import DATA_BUCKET, Timings, create_task, prefix_of, read_object
from tests.runner.test_sharding import untimed, without_run_details
from tests.support.s3 import S3Endpoint

pytestmark = pytest.mark.e2e
SAMPLES = 61  # 4 does not divide it
DELAY_SECONDS = 1.0
WORDS = ["the", "cat", "sat", "on", "a", "mat", "and", "then", "the", "dog", "ran", "far"]


def _rows() -> list[dict[str, Any]]:
    return [{"prompt": f"row-{i}: continue", "reference": " ".join(WORDS[i % 6:i % 6 + 5])}
            for i in range(SAMPLES)]


def test_four_shards_as_real_pods_score_like_one_pod(
        cluster: Cluster, e2e_namespace: str, pod_s3: S3Endpoint, model: FakeLLM,
        pin: dict[str, Any], timings: Timings) -> None:
    pod_s3.client().put_object(Bucket=DATA_BUCKET, Key="shard-gen.jsonl", Body="".join(
        json.dumps(r) + "\n" for r in _rows()).encode())
    model.answers = {f"row-{i}: continue": " ".join(WORDS[i % 7:i % 7 + 4])
                     for i in range(SAMPLES)}
    model.delay_seconds = DELAY_SECONDS
    spec: dict[str, Any] = {
        "model": {"name": "scripted-llm", "endpoint": {"url": model.url}},
        "benchmarks": [{"name": "continue", "dataset": {"uri": f"s3://{DATA_BUCKET}/"
                                                        "shard-gen.jsonl"},
                        "task": "generation", "metrics": ["bleu", "chrf", "exact-match"]}],
        "parameters": {"concurrency": 1},
        "resources": {"gpu": 0, "cpu": "250m", "memory": "384Mi"},
        "scheduling": pin, "retries": 1,
    }
    one = create_task(cluster, e2e_namespace, "one-pod", spec)
    single = one.finish(timings, "1 pod, 61 samples, 1 s per request", timeout=300)
    assert (single["phase"], single["reason"]) == ("Completed", "Succeeded"), single

    sharded_spec = copy.deepcopy(spec)
    sharded_spec["parallelism"] = 4
    many = create_task(cluster, e2e_namespace, "four-shards", sharded_spec)
    sharded = many.finish(timings, "4 shards, 61 samples, 1 s per request", timeout=300)
    assert (sharded["phase"], sharded["reason"]) == ("Completed", "Succeeded"), sharded
    assert sharded["shards"] == {"total": 4, "done": 4, "failed": 0, "text": "4/4",
                                 "merge": "Succeeded"}
    assert sharded["overallScore"] == single["overallScore"]
    # The same entries but for when each benchmark ran (the shards answered, not the merge).
    assert untimed(sharded)["benchmarks"] == untimed(single)["benchmarks"]

    def summary(status: dict[str, Any]) -> dict[str, Any]:
        document: dict[str, Any] = json.loads(read_object(pod_s3, prefix_of(status)
                                                          + "summary.json"))
        return document

    merged, alone = summary(sharded), summary(single)
    assert merged.pop("task")["name"] == "four-shards" and alone.pop("task")  # two tasks
    assert without_run_details(merged) == without_run_details(alone)
    assert [s["samples"] for s in merged["shards"]["shards"]] == [16, 15, 15, 15]
    # Every pod of the Indexed Job ran on the node, one per index, and asked the model.
    pods = many.pods()
    indexes = sorted(int(p["metadata"]["labels"]["batch.kubernetes.io/job-completion-index"])
                     for p in pods if "batch.kubernetes.io/job-completion-index"
                     in p["metadata"]["labels"])
    assert indexes == [0, 1, 2, 3]
    assert len(model.requests) == 2 * SAMPLES
