"""`kubectl evaluation` against the real control plane and moto, over real bundles."""

from __future__ import annotations

import hashlib
import json
import subprocess
import zipfile
from pathlib import Path
from typing import Any

import pytest
import yaml
from devcluster import play_runner
from devcluster.cluster import Cluster
from devcluster.fake_llm import FakeLLM
from evaluation_runner import layout

from tests.console.conftest import (
    DATA_BUCKET,
    RESULTS_BUCKET,
    Completed,
    Plugin,
    run_task_with_runner,
)
from tests.support.s3 import S3Endpoint

pytestmark = [pytest.mark.cluster, pytest.mark.kwok]


def bundle_object(s3: S3Endpoint, status: dict[str, Any], name: str) -> bytes:
    uri = str(status["results"]["uri"])
    prefix = uri[len(f"s3://{RESULTS_BUCKET}/"):]
    body: bytes = s3.client().get_object(Bucket=RESULTS_BUCKET, Key=prefix + name)["Body"].read()
    return body


def test_list_shows_tasks_in_every_format(plugin: Plugin, completed: Completed) -> None:
    table = plugin.run("list", "-n", completed.namespace).stdout
    lines = table.splitlines()
    assert lines[0].split() == ["NAME", "STATUS", "OVERALL", "MODEL", "PROGRESS", "AGE"]
    baseline = next(line for line in lines if line.startswith("baseline "))
    overall = completed.statuses["baseline"]["overallScore"]
    assert baseline.split()[1:4] == ["Completed", f"{overall:.4f}", "tiny-llm"]
    rows = json.loads(plugin.run("list", "-n", completed.namespace, "-o", "json").stdout)
    phases = {r["name"]: r["phase"] for r in rows}
    assert (phases["baseline"], phases["better"]) == ("Completed", "Completed")
    assert yaml.safe_load(plugin.run("list", "-n", completed.namespace, "-o", "yaml").stdout
                          ) == rows
    everywhere = plugin.run("list", "-A").stdout
    assert "NAMESPACE" in everywhere and completed.namespace in everywhere


def test_show_has_scores_metrics_and_configuration_from_the_bundle(
        plugin: Plugin, completed: Completed, s3_server: S3Endpoint) -> None:
    summary = json.loads(bundle_object(s3_server, completed.statuses["baseline"],
                                       layout.SUMMARY_JSON))
    details = json.loads(plugin.run("show", "baseline", "-n", completed.namespace, "-o",
                                    "json").stdout)
    assert details["summarySource"] == "summary.json"
    assert details["row"]["overall"] == pytest.approx(summary["overallScore"])
    arc = next(b for b in details["benchmarks"] if b["name"] == "arc-mini")
    assert arc["score"] == pytest.approx(4 / 6)
    accuracy = next(m for m in arc["metrics"] if m["name"] == "accuracy")
    assert accuracy["stderr"] == pytest.approx(summary["benchmarks"][0]["stderr"]["accuracy"])
    assert details["datasets"][0]["sha256"] == summary["datasets"][0]["sha256"]
    assert details["framework"]["name"] == "builtin"
    text = plugin.run("show", f"{completed.namespace}/baseline").stdout
    for expected in ("Completed", f"{summary['overallScore']:.4f}", "arc-mini", "translate",
                     "accuracy: 0.6667 ± ", "bleu", "Framework", "builtin",
                     f"sha256 {summary['datasets'][0]['sha256'][:16]}", "6 rows",
                     "temperature=0", completed.statuses["baseline"]["results"]["bundle"]):
        assert expected in text, expected


def test_download_saves_the_bundle_byte_for_byte(plugin: Plugin, completed: Completed,
                                                 s3_server: S3Endpoint) -> None:
    result = plugin.run("download", "better", "-n", completed.namespace, "-o", "better.zip")
    saved = (plugin.home / "better.zip").read_bytes()
    original = bundle_object(s3_server, completed.statuses["better"], layout.RESULTS_ZIP)
    assert saved == original
    assert f"sha256 {hashlib.sha256(original).hexdigest()}" in result.stdout
    assert "your AWS credentials" in result.stderr
    names = zipfile.ZipFile(plugin.home / "better.zip").namelist()
    assert layout.samples_key("arc-mini") in names and layout.SUMMARY_CSV in names


def test_download_uses_the_namespace_secret_without_own_credentials(
        plugin: Plugin, completed: Completed, s3_server: S3Endpoint) -> None:
    """No AWS credentials and no AWS_ENDPOINT_URL: the Secret and the runner's endpoint."""
    result = plugin.run("download", "baseline", "-n", completed.namespace,
                        own_s3_credentials=False)
    assert (plugin.home / "baseline-results.zip").read_bytes() == bundle_object(
        s3_server, completed.statuses["baseline"], layout.RESULTS_ZIP)
    assert f"Secret {completed.namespace}/evaluation-s3-credentials" in result.stderr


def test_samples_filter_right_wrong_and_search(plugin: Plugin, completed: Completed) -> None:
    ns = completed.namespace
    wrong = json.loads(plugin.run("samples", "baseline", "-n", ns, "--wrong", "-o",
                                  "json").stdout)
    assert (wrong["matched"], wrong["total"]) == (2, 6)
    assert {s["input"].splitlines()[0] for s in wrong["samples"]} >= {"Colour of the sky?"}
    assert all(s["right"] is False and s["scores"]["accuracy"] == 0 for s in wrong["samples"])
    right = json.loads(plugin.run("samples", "baseline", "-n", ns, "--right", "-o",
                                  "json").stdout)
    assert right["matched"] == 4
    found = json.loads(plugin.run("samples", "baseline", "-n", ns, "-b", "translate",
                                  "--grep", "morgen", "-o", "json").stdout)
    assert [s["prediction"] for s in found["samples"]] == ["Good morning to you"]
    table = plugin.run("samples", "baseline", "-n", ns, "-b", "translate", "--limit", "2"
                       ).stdout
    assert "Hello world" in table and "showing 1-2 of 4 matching" in table
    missing = plugin.run("samples", "baseline", "-n", ns, "-b", "nope", check=False)
    assert missing.returncode == 1 and "has no benchmark 'nope'" in missing.stderr


def test_compare_shows_deltas_and_where_answers_differ(plugin: Plugin,
                                                       completed: Completed) -> None:
    ns = completed.namespace
    doc = json.loads(plugin.run("compare", "baseline", "better", "-n", ns, "--samples",
                                "arc-mini", "-o", "json").stdout)
    comparison = doc["comparison"]
    assert comparison["tasks"] == [f"{ns}/baseline", f"{ns}/better"]
    arc = next(r for r in comparison["rows"] if r["benchmark"] == "arc-mini")
    assert arc["cells"][1]["delta"] == pytest.approx(2 / 6)
    # stderr of 4/6 right is 0.21; of 6/6 right 0: a delta of 0.33 is beyond the noise.
    assert arc["cells"][1]["beyondNoise"] is True
    assert doc["differences"]["count"] == 2
    table = plugin.run("compare", "baseline", "better", "-n", ns, "--samples", "translate"
                       ).stdout
    assert "+0.3333 *" in table and "(baseline)" in table
    assert "Thanks a lot" in table and "Thank you" in table
    one = plugin.run("compare", "baseline", "-n", ns, check=False)
    assert one.returncode == 1 and "at least two tasks" in one.stderr


def test_logs_come_from_the_bundle_after_the_pod_is_gone(
        plugin: Plugin, completed: Completed, s3_server: S3Endpoint, cluster: Cluster) -> None:
    ns = completed.namespace
    cluster.kubectl("delete", "pods", "-n", ns, "-l", "evaluation.dev/task=baseline",
                    "--wait=true")
    result = plugin.run("logs", "baseline", "-n", ns)
    runner_log = bundle_object(s3_server, completed.statuses["baseline"],
                               layout.RUNNER_LOG).decode()
    assert runner_log.strip() and result.stdout.strip() == runner_log.strip()
    assert layout.RUNNER_LOG in result.stderr  # says where the log came from


def test_a_user_without_permission_gets_a_clear_refusal(
        plugin: Plugin, completed: Completed, cluster: Cluster) -> None:
    ns = completed.namespace
    refused = plugin.run("--as", "mallory", "list", "-n", ns, check=False)
    assert refused.returncode == 1
    assert "refused: mallory may not list evaluationtasks in namespace" in refused.stderr
    # A viewer may read tasks but neither Secrets nor S3 (no own credentials): the download
    # says what it tried.
    cluster.kubectl("create", "role", "task-viewer", "-n", ns, "--verb=get,list,watch",
                    "--resource=evaluationtasks.evaluation.dev,configmaps")
    cluster.kubectl("create", "rolebinding", "task-viewer", "-n", ns, "--role=task-viewer",
                    "--user=viewer")
    assert "baseline" in plugin.run("--as", "viewer", "list", "-n", ns).stdout
    failed = plugin.run("--as", "viewer", "download", "baseline", "-n", ns,
                        own_s3_credentials=False, check=False)
    assert failed.returncode == 1
    message = " ".join(failed.stderr.split())
    assert "your AWS credentials: none found" in message
    assert f"Secret {ns}/evaluation-s3-credentials: you may not read it" in message
    assert not (plugin.home / "baseline-results.zip").exists()
    denied = plugin.run("--as", "viewer", "delete", "baseline", "-n", ns, "--yes",
                        check=False)
    assert denied.returncode == 1
    assert "refused: viewer may not delete evaluationtask 'baseline'" in " ".join(
        denied.stderr.split())


def test_delete_warns_asks_and_purges(plugin: Plugin, completed: Completed, cluster: Cluster,
                                      s3_server: S3Endpoint, llm: FakeLLM,
                                      tmp_path: Path) -> None:
    ns = completed.namespace
    status = run_task_with_runner(cluster, s3_server, ns, "doomed", llm, tmp_path / "run")
    prefix = status["results"]["uri"][len(f"s3://{RESULTS_BUCKET}/"):]
    s3 = s3_server.client()

    def versions() -> int:
        listing = s3.list_object_versions(Bucket=RESULTS_BUCKET, Prefix=prefix)
        return len(listing.get("Versions", [])) + len(listing.get("DeleteMarkers", []))

    assert versions() > 0
    # Declining: nothing downloaded, nothing deleted.
    declined = plugin.run("delete", "doomed", "-n", ns, input="n\nn\n", check=False)
    assert declined.returncode == 1
    warning = " ".join(declined.stderr.split())
    assert f"Deleting {ns}/doomed is irreversible" in warning
    assert f"{versions()} object versions under {status['results']['uri']}" in warning
    assert "Aborted; nothing was deleted" in warning
    assert versions() > 0 and cluster.kubectl("get", "evaluationtask", "doomed", "-n", ns)
    # Accepting the offered download, then confirming, while `list --watch` looks on.
    watcher = subprocess.Popen(
        [str(cluster.kubectl_path), "evaluation", "list", "-n", ns, "--watch"],
        env=plugin.env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    done = plugin.run("delete", "doomed", "-n", ns, input="y\ny\n")
    assert (plugin.home / "doomed-results.zip").is_file()
    assert f"{ns}/doomed deleted; its results are purged." in done.stdout
    assert versions() == 0
    gone = cluster.kubectl("get", "evaluationtask", "doomed", "-n", ns, check=False)
    assert gone.returncode != 0
    watcher.terminate()
    watched, _ = watcher.communicate(timeout=15)
    rows = [line for line in watched.splitlines() if line.startswith("doomed ")]
    assert "Completed" in rows[0] and any("Deleting" in row for row in rows[1:]), watched
    assert f"{ns}/doomed deleted" in watched


def test_show_of_a_failed_task_says_why(plugin: Plugin, completed: Completed,
                                        cluster: Cluster, llm: FakeLLM) -> None:
    from devcluster import play_runner
    from devcluster.kwok_pods import finish_pod
    from kubernetes import client

    ns = completed.namespace
    task = play_runner.manifest("broken", llm.url, "console-datasets")
    cluster.kubectl("create", "-n", ns, "-f", "-", input=json.dumps(task))
    pod = play_runner.wait_running_pod(cluster, ns, "broken")
    message = ("benchmarks[0].dataset.uri: s3://console-datasets/missing.jsonl does not "
               "exist")
    finish_pod(client.CoreV1Api(cluster.api_client()), ns, pod["metadata"]["name"], 78,
               message=json.dumps({"v": 1, "status": "Failed", "reason": "ConfigurationError",
                                   "message": message}))
    cluster.wait_until("broken to fail", lambda: "Failed" in plugin.run(
        "list", "-n", ns).stdout.split("broken", 1)[1].splitlines()[0], timeout=60)
    shown = plugin.run("show", "broken", "-n", ns).stdout
    assert "Failed" in shown and "ConfigurationError" in shown
    assert "missing.jsonl does not exist" in " ".join(shown.split())
    details = json.loads(plugin.run("show", "broken", "-n", ns, "-o", "json").stdout)
    assert details["row"]["reason"] == "ConfigurationError"
    assert details["summarySource"] == "status"
    download = plugin.run("download", "broken", "-n", ns, check=False)
    assert download.returncode == 1 and "is Failed" in download.stderr


def test_a_partially_failed_task_shows_what_failed_and_its_bundle_downloads(
        plugin: Plugin, cluster: Cluster, completed: Completed, s3_server: S3Endpoint,
        llm: FakeLLM, tmp_path: Path) -> None:
    namespace = f"{completed.namespace}-partial"
    cluster.kubectl("create", "namespace", namespace)
    cluster.kubectl("create", "secret", "generic", "evaluation-s3-credentials", "-n", namespace,
                    f"--from-literal=AWS_ACCESS_KEY_ID={s3_server.access_key}",
                    f"--from-literal=AWS_SECRET_ACCESS_KEY={s3_server.secret_key}")
    try:
        play_runner.script_answers(llm, play_runner.BASELINE)
        task = play_runner.manifest("partial", llm.url, DATA_BUCKET)
        task["spec"]["benchmarks"][1]["dataset"]["uri"] = f"s3://{DATA_BUCKET}/missing.jsonl"
        status = play_runner.run_task(
            cluster, namespace, task, {"AWS_ACCESS_KEY_ID": s3_server.access_key,
                                       "AWS_SECRET_ACCESS_KEY": s3_server.secret_key},
            tmp_path / "partial-run")
        assert (status["phase"], status["reason"]) == ("Failed", "PartiallyFailed")
        plugin.run("download", "partial", "-n", namespace, "-o", "partial.zip")
        assert (plugin.home / "partial.zip").read_bytes() == bundle_object(
            s3_server, status, layout.RESULTS_ZIP)
        details = json.loads(plugin.run("show", "partial", "-n", namespace, "-o",
                                        "json").stdout)
        assert details["summarySource"] == "summary.json"
        by_name = {b["name"]: b for b in details["benchmarks"]}
        assert by_name["arc-mini"]["score"] == pytest.approx(4 / 6)
        assert by_name["translate"]["score"] is None
        assert "missing.jsonl" in by_name["translate"]["error"]
    finally:
        cluster.kubectl("delete", "namespace", namespace, "--wait=false", check=False)
