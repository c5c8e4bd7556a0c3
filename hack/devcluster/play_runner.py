"""Play a task's pod on KWOK with the real runner, so the task ends with a real bundle.

The runner (`python -m evaluation_runner`) runs here, with the exact config.json the operator
wrote into the task's ConfigMap, against a scripted model server (hack/devcluster/fake_llm.py)
and the S3 endpoint that config names. Its exit code and termination message then finish the
KWOK pod, as a kubelet would report them. Used by tests/console and `make console-demo`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from devcluster.cluster import Cluster
from devcluster.fake_llm import FakeLLM
from devcluster.kwok_pods import EXIT_CODE, finish_pod

MC_ROWS: list[dict[str, Any]] = [
    {"question": "Capital of France?", "options": ["Berlin", "Paris", "Rome", "Madrid"],
     "answer": 1},
    {"question": "2 + 2 =", "options": ["3", "4", "5", "22"], "answer": 1},
    {"question": "Largest ocean?", "options": ["Pacific", "Atlantic", "Indian", "Arctic"],
     "answer": 0},
    {"question": "Colour of the sky?", "options": ["Green", "Red", "Blue", "Yellow"],
     "answer": 2},
    {"question": "Opposite of hot?", "options": ["Warm", "Cold", "Tepid", "Boiling"],
     "answer": 1},
    {"question": "Number of legs of a spider?", "options": ["6", "8", "10", "4"], "answer": 1},
]
GEN_ROWS = [
    {"src": "Translate: Hallo Welt", "tgt": "Hello world"},
    {"src": "Translate: Guten Morgen", "tgt": "Good morning"},
    {"src": "Translate: Danke schön", "tgt": "Thank you very much"},
    {"src": "Translate: Gute Nacht", "tgt": "Good night"},
]
LETTERS = "ABCD"
# Two scripted models: the baseline gets 4 of 6 questions right, the better one all 6.
BASELINE = ({"Capital of France?", "2 + 2 =", "Largest ocean?", "Opposite of hot?"},
            {"Hallo Welt": "Hello world", "Guten Morgen": "Good morning to you",
             "Danke schön": "Thanks a lot", "Gute Nacht": "Good night"})
BETTER = ({str(r["question"]) for r in MC_ROWS},
          {"Hallo Welt": "Hello world", "Guten Morgen": "Good morning",
           "Danke schön": "Thank you", "Gute Nacht": "Good night"})


def upload_datasets(s3: Any, bucket: str) -> None:
    s3.put_object(Bucket=bucket, Key="mc.jsonl",
                  Body="".join(json.dumps(r) + "\n" for r in MC_ROWS).encode())
    s3.put_object(Bucket=bucket, Key="gen.jsonl", Body="".join(
        json.dumps(r, ensure_ascii=False) + "\n" for r in GEN_ROWS).encode())


def script_answers(llm: FakeLLM, model: tuple[set[str], dict[str, str]]) -> None:
    right, generation = model
    llm.answers.clear()
    for row in MC_ROWS:
        correct = int(row["answer"])
        letter = correct if row["question"] in right else (correct + 1) % 4
        llm.answers[f"Question: {row['question']}"] = f"The answer is ({LETTERS[letter]})."
    llm.answers.update(generation)


def manifest(name: str, llm_url: str, data_bucket: str, model: str = "tiny-llm"
             ) -> dict[str, Any]:
    return {"apiVersion": "evaluation.dev/v1alpha1", "kind": "EvaluationTask",
            "metadata": {"name": name},
            "spec": {
                "model": {"name": model, "endpoint": {"url": llm_url}},
                "benchmarks": [
                    {"name": "arc-mini", "task": "multiple-choice",
                     "metrics": ["accuracy", "f1"],
                     "dataset": {"uri": f"s3://{data_bucket}/mc.jsonl",
                                 "fields": {"prompt": "question", "choices": "options",
                                            "reference": "answer"}}},
                    {"name": "translate", "task": "generation",
                     "metrics": ["bleu", "exact-match", "rouge-l"],
                     "dataset": {"uri": f"s3://{data_bucket}/gen.jsonl",
                                 "fields": {"prompt": "src", "reference": "tgt"}}},
                ],
                "parameters": {"temperature": 0, "maxTokens": 32, "concurrency": 2,
                               "seed": 7},
                "resources": {"gpu": 1},
            }}


def wait_running_pod(cluster: Cluster, namespace: str, name: str) -> dict[str, Any]:
    def find() -> dict[str, Any] | None:
        pods = cluster.kubectl_json("get", "pods", "-n", namespace, "-l",
                                    f"evaluation.dev/task={name}")["items"]
        for pod in pods:
            annotations = pod["metadata"].get("annotations") or {}
            if pod["status"].get("phase") == "Running" and EXIT_CODE not in annotations:
                return dict(pod)
        return None

    found: dict[str, Any] = cluster.wait_until(f"a Running pod of {name}", find, timeout=90)
    return found


def run_task(cluster: Cluster, namespace: str, task: dict[str, Any], s3_keys: dict[str, str],
             workdir: Path) -> dict[str, Any]:
    """Create the task, run the runner as its pod would, finish the pod; the final status."""
    name = task["metadata"]["name"]
    cluster.kubectl("create", "-n", namespace, "-f", "-", input=json.dumps(task))
    pod = wait_running_pod(cluster, namespace, name)
    config = cluster.kubectl_json("get", "configmap", f"{name}-config", "-n", namespace)
    workdir.mkdir(parents=True, exist_ok=True)
    config_path = workdir / "config.json"
    config_path.write_text(config["data"]["config.json"])
    termination = workdir / "termination-log"
    result = subprocess.run(
        [sys.executable, "-m", "evaluation_runner", "--config", str(config_path),
         "--termination-log", str(termination)],
        env={"PATH": "/usr/bin:/bin", "HOME": str(workdir), **s3_keys,
             "PYTHONPATH": os.pathsep.join(sys.path)},
        capture_output=True, text=True, timeout=180, check=False)
    (workdir / "runner.stderr").write_text(result.stderr)
    if result.returncode != 0:
        raise RuntimeError(f"the runner exited {result.returncode}: {result.stderr[-3000:]}")
    from kubernetes import client

    core = client.CoreV1Api(cluster.api_client())
    finish_pod(core, namespace, pod["metadata"]["name"], 0, message=termination.read_text())

    def finished() -> dict[str, Any] | None:
        found = cluster.kubectl_json("get", "evaluationtask", name, "-n", namespace)
        status = found.get("status") or {}
        return status if status.get("phase") in ("Completed", "Failed") else None

    status: dict[str, Any] = cluster.wait_until(f"{namespace}/{name} to finish", finished,
                                                timeout=90)
    return status
