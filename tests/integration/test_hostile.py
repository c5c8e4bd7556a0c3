"""A hostile world (issue 10): a runner that writes garbage, a runner that writes 150 MB of
progress, and a network that goes silent. Real API server, real S3 (moto), the operator as
users run it."""

from __future__ import annotations

import dataclasses
import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from devcluster.cluster import Cluster
from devcluster.kwok_pods import finish_pod

from tests.integration.conftest import (
    BUCKET,
    RESULTS_TIMEOUT_SECONDS,
    OperatorProcess,
    create_task,
    get_task,
    prefix_of,
    running_pod,
    success_message,
    task_manifest,
    wait_status,
)
from tests.support.s3 import S3Endpoint
from tests.support.tcp_proxy import SilenceableProxy

pytestmark = [pytest.mark.cluster, pytest.mark.kwok]
SCORES = [{"name": "arc-easy", "score": 0.5, "primaryMetric": "accuracy",
           "metrics": {"accuracy": 0.5}, "samples": 2}]
MiB = 1024 * 1024


def _started(cluster: Cluster, namespace: str, name: str) -> dict[str, Any]:
    return wait_status(cluster, namespace, name, "running with a results location",
                       lambda s: s.get("startTime") and s.get("results"))


# --- finding 2: runner output is untrusted ------------------------------------------------


def test_bad_runner_output_fails_the_task_saying_what_was_wrong(
    cluster: Cluster, namespace: str, running_operator: OperatorProcess, core: Any,
) -> None:
    bad = {
        "nan-score": ('{"v": 1, "status": "Succeeded", "overallScore": NaN, '
                      '"benchmarks": [{"name": "arc-easy", "score": 0.5}]}',
                      "overallScore: NaN is not a finite number"),
        "deep": ("[" * 2000 + "]" * 2000, "nested more than 32 levels deep"),
        "wrong-types": (json.dumps({"v": 1, "status": "Succeeded", "overallScore": 0.5,
                                    "benchmarks": [1, 2]}),
                        "benchmarks[0]: expected an object, got 1"),
        "off-scale": (success_message(42, SCORES, "s3://x/y/"),
                      "overallScore: 42 is outside 0-1"),
    }
    for name in [*bad, "no-results"]:
        create_task(cluster, namespace, task_manifest(name))
    pods = {name: running_pod(cluster, namespace, name) for name in [*bad, "no-results"]}
    for name, (message, _) in bad.items():
        finish_pod(core, namespace, pods[name]["metadata"]["name"], 0, message=message)
    # Exit 0, no termination message, no summary.json: nothing to read, ever.
    finish_pod(core, namespace, pods["no-results"]["metadata"]["name"], 0, message="")

    for name, (_, expected) in bad.items():
        status = wait_status(cluster, namespace, name, "Failed", lambda s: s.get("phase")
                             == "Failed")
        assert status["reason"] == "InvalidRunnerOutput", status
        assert f"termination message: {expected}" in status["message"]
        assert "overallScore" not in status and "benchmarks" not in status

    collecting = wait_status(cluster, namespace, "no-results", "CollectingResults",
                             lambda s: s.get("reason") in ("CollectingResults",
                                                           "ResultsUnreadable"))
    assert collecting["reason"] == "CollectingResults", collecting
    assert "summary.json does not exist" in collecting["message"]
    failed = wait_status(cluster, namespace, "no-results", "ResultsUnreadable",
                         lambda s: s.get("phase") == "Failed",
                         timeout=RESULTS_TIMEOUT_SECONDS + 30)
    assert failed["reason"] == "ResultsUnreadable", failed
    assert f"within {RESULTS_TIMEOUT_SECONDS}s" in failed["message"]


def test_impossible_progress_is_not_shown(
    cluster: Cluster, namespace: str, running_operator: OperatorProcess, core: Any,
    s3_server: S3Endpoint,
) -> None:
    create_task(cluster, namespace, task_manifest("liar"))
    running_pod(cluster, namespace, "liar")
    key = prefix_of(_started(cluster, namespace, "liar")) + "progress.json"
    s3 = s3_server.client()
    s3.put_object(Bucket=BUCKET, Key=key, Body=b'{"samplesDone": 50, "samplesTotal": 10}')
    log = running_operator.log_dir / f"operator-{running_operator.starts}.log"
    refused = "liar not shown: progress.json: samplesDone: 50 is more than samplesTotal (10)"
    deadline = time.monotonic() + 30
    while refused not in log.read_text(errors="replace"):
        status = (get_task(cluster, namespace, "liar") or {}).get("status", {})
        assert "progress" not in status, f"impossible progress shown: {status['progress']}"
        assert time.monotonic() < deadline, f"never refused:\n{running_operator.log()}"
        time.sleep(0.5)
    assert "progress" not in (get_task(cluster, namespace, "liar") or {}).get("status", {})
    s3.put_object(Bucket=BUCKET, Key=key, Body=b'{"samplesDone": 5, "samplesTotal": 10}')
    status = wait_status(cluster, namespace, "liar", "progress 5/10",
                         lambda s: (s.get("progress") or {}).get("text") == "5/10")
    assert status["progress"]["samplesDone"] == 5


# --- finding 3: bounded memory -------------------------------------------------------------


def _rss(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak) of a process, in bytes."""
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(rest.split()[0]) * 1024
    return values


def _wait_for_log(operator: OperatorProcess, text: str, timeout: float = 60) -> None:
    path = operator.log_dir / f"operator-{operator.starts}.log"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if text in path.read_text(errors="replace"):
            return
        time.sleep(0.5)
    raise AssertionError(f"the operator never logged {text!r}:\n{operator.log()}")


def test_a_150_mb_progress_json_does_not_grow_the_operator(
    cluster: Cluster, namespace: str, running_operator: OperatorProcess, core: Any,
    s3_server: S3Endpoint,
) -> None:
    assert running_operator.process is not None
    pid = running_operator.process.pid
    create_task(cluster, namespace, task_manifest("hog"))
    running_pod(cluster, namespace, "hog")
    key = prefix_of(_started(cluster, namespace, "hog")) + "progress.json"
    huge = b'{"samplesDone": 7, "samplesTotal": 10, "pad": "' + b"x" * (150 * 1000 * 1000) \
        + b'"}'
    before = _rss(pid)
    peak = before["VmRSS"]
    stop = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not stop.wait(0.05):
            peak = max(peak, _rss(pid)["VmRSS"])

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        s3_server.client().put_object(Bucket=BUCKET, Key=key, Body=huge)
        del huge
        # Three reads of it at least (the progress interval is 2 s); an operator that reads
        # it whole shows 7/10 instead of refusing it.
        deadline = time.monotonic() + 60
        refused = "hog not shown: progress.json is"
        log = running_operator.log_dir / f"operator-{running_operator.starts}.log"
        while time.monotonic() < deadline:
            if log.read_text(errors="replace").count(refused) >= 3:
                break
            status = (get_task(cluster, namespace, "hog") or {}).get("status", {})
            if (status.get("progress") or {}).get("text") == "7/10":
                time.sleep(6)  # let it read a few more times, as it would in production
                break
            time.sleep(0.5)
    finally:
        stop.set()
        sampler.join(5)
    after = _rss(pid)
    if after["VmHWM"] > before["VmHWM"]:
        peak = max(peak, after["VmHWM"])
    growth = (peak - before["VmRSS"]) / MiB
    print(f"operator RSS before {before['VmRSS'] / MiB:.1f} MiB, peak {peak / MiB:.1f} MiB, "
          f"growth {growth:.1f} MiB")
    assert growth < 50, f"the operator grew by {growth:.0f} MiB reading a 150 MB progress.json"
    status = (get_task(cluster, namespace, "hog") or {}).get("status", {})
    assert (status.get("progress") or {}).get("text") != "7/10"
    assert running_operator.process.poll() is None
    # A sane progress.json afterwards is shown as usual.
    s3_server.client().put_object(Bucket=BUCKET, Key=key,
                                  Body=b'{"samplesDone": 3, "samplesTotal": 10}')
    wait_status(cluster, namespace, "hog", "progress 3/10",
                lambda s: (s.get("progress") or {}).get("text") == "3/10")


# --- finding 1: silent network partitions --------------------------------------------------

PARTITION_SECONDS = 45
RECOVERY_SECONDS = 60


def _proxied_kubeconfig(cluster: Cluster, proxy: SilenceableProxy, path: Path) -> Path:
    config = yaml.safe_load(cluster.kubeconfig.read_text())
    for entry in config["clusters"]:
        server = entry["cluster"]["server"]
        entry["cluster"]["server"] = f"{server.rsplit(':', 1)[0]}:{proxy.port}"
    path.write_text(yaml.safe_dump(config))
    return path


def _api_server(cluster: Cluster) -> tuple[str, int]:
    config = yaml.safe_load(cluster.kubeconfig.read_text())
    server = config["clusters"][0]["cluster"]["server"]
    host, port = server.split("://", 1)[1].rsplit(":", 1)
    return host, int(port)


def test_the_operator_recovers_from_a_silent_partition(
    cluster: Cluster, namespace: str, operator: OperatorProcess, core: Any,
    s3_server: S3Endpoint, tmp_path: Path,
) -> None:
    operator.stop()  # the shared operator must not do this one's work
    proxy = SilenceableProxy(*_api_server(cluster))
    proxy.start()
    behind_proxy = dataclasses.replace(
        cluster, kubeconfig=_proxied_kubeconfig(cluster, proxy, tmp_path / "kubeconfig"))
    partitioned = OperatorProcess(behind_proxy, s3_server, tmp_path)
    partitioned.start()
    try:
        create_task(cluster, namespace, task_manifest("before"))
        before_pod = running_pod(cluster, namespace, "before")
        uri = _started(cluster, namespace, "before")["results"]["uri"]

        proxy.silence()
        silenced = time.monotonic()
        finish_pod(core, namespace, before_pod["metadata"]["name"], 0,
                   message=success_message(0.5, SCORES, uri))
        create_task(cluster, namespace, task_manifest("during"))
        time.sleep(PARTITION_SECONDS - (time.monotonic() - silenced))
        proxy.heal()
        healed = time.monotonic()
        create_task(cluster, namespace, task_manifest("after"))

        done: dict[str, float] = {}
        finished: set[str] = {"before"}
        while len(done) < 3 and time.monotonic() - healed < RECOVERY_SECONDS:
            for name in ("before", "during", "after"):
                status = (get_task(cluster, namespace, name) or {}).get("status") or {}
                if name not in done and status.get("phase") == "Completed":
                    done[name] = time.monotonic() - healed
                if name not in finished and status.get("startTime"):
                    pod = running_pod(cluster, namespace, name, timeout=10)
                    finish_pod(core, namespace, pod["metadata"]["name"], 0,
                               message=success_message(0.5, SCORES, status["results"]["uri"]))
                    finished.add(name)
            time.sleep(0.5)
        print(f"Completed, seconds after the network healed: {done}")
        assert set(done) == {"before", "during", "after"}, (
            f"within {RECOVERY_SECONDS}s of healing only {done} completed:\n"
            f"{partitioned.log()}")
        assert partitioned.process is not None and partitioned.process.poll() is None
    finally:
        partitioned.stop()
        proxy.stop()
        operator.start()
