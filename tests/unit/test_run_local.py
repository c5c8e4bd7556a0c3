"""`make run`'s demo (hack/run_local.py): example 05 pointed at the demo model and pinned to
the real node, and the score the README shows follows from the demo model's script."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType
from typing import Any

import yaml
from evaluation_operator.config import OperatorSettings
from evaluation_operator.spec import parse_task_spec

ROOT = Path(__file__).resolve().parents[2]


def run_local() -> ModuleType:
    spec = importlib.util.spec_from_file_location("run_local", ROOT / "hack" / "run_local.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class Pinned:
    def pin(self) -> dict[str, Any]:
        return {"nodeSelector": {"kubernetes.io/hostname": "real-node"},
                "tolerations": [{"key": "evaluation.dev/real-node", "operator": "Equal",
                                 "value": "true", "effect": "NoSchedule"}]}


def test_the_demo_is_example_05_on_the_demo_model_and_the_real_node() -> None:
    module = run_local()
    docs = module.demo_manifests("http://10.244.0.1:4321/v1", Pinned())
    original = list(yaml.safe_load_all(module.EXAMPLE.read_text()))
    assert [d["kind"] for d in docs] == [d["kind"] for d in original]
    task = next(d for d in docs if d["kind"] == "EvaluationTask")
    assert task["spec"]["model"]["endpoint"]["url"] == "http://10.244.0.1:4321/v1"
    assert task["spec"]["scheduling"] == Pinned().pin()
    spec = parse_task_spec(task["spec"], OperatorSettings(s3_bucket="eval-results"))
    assert spec.resources.gpu == 0  # the real node has no GPU


def test_the_demo_model_knows_two_of_the_three_capitals() -> None:
    module = run_local()
    configmap = next(d for d in yaml.safe_load_all(module.EXAMPLE.read_text())
                     if d["kind"] == "ConfigMap")
    rows = [json.loads(line) for text in configmap["data"].values()
            for line in text.splitlines() if line.strip()]
    logprobs = module.DEMO_CHOICE_LOGPROBS
    right = sum(max(r["choices"], key=lambda c: logprobs[c]) == r["reference"] for r in rows)
    assert (right, len(rows)) == (2, 3)
