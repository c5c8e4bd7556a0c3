"""The config.json the operator writes, held against the runner contract's own example."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from evaluation_operator.config import OperatorSettings
from evaluation_operator.runner_config import build_runner_config
from evaluation_operator.s3 import results_location
from evaluation_operator.spec import parse_task_spec

CONTRACT = Path(__file__).resolve().parents[2] / "docs" / "runner-contract.md"
UID = "0b6c4f5e-1111-2222-3333-444455556666"
SETTINGS = OperatorSettings(s3_bucket="eval-results", s3_endpoint="http://minio.minio.svc:9000",
                            s3_region="us-east-1", progress_interval_seconds=10)


def contract_example() -> dict[str, Any]:
    block = re.search(r"```json\n(.*?)```", CONTRACT.read_text(), re.S)
    assert block, "the contract's config example is gone"
    example: dict[str, Any] = json.loads(block.group(1))
    return example


def shape(value: Any) -> Any:
    """Keys all the way down (first list item stands for all)."""
    if isinstance(value, dict):
        return {k: shape(v) for k, v in value.items()}
    if isinstance(value, list) and value and isinstance(value[0], dict):
        return [shape(value[0])]
    return type(value).__name__ if value is not None else None


def config_for(spec: dict[str, Any]) -> dict[str, Any]:
    parsed = parse_task_spec(spec, SETTINGS)
    location = results_location("eval-results", "runs", "team-a", "llama3-8b-reasoning", UID)
    return build_runner_config(parsed, name="llama3-8b-reasoning", namespace="team-a", uid=UID,
                               location=location, settings=SETTINGS)


CONTRACT_SPEC = {
    "model": {"name": "llama-3-8b", "endpoint": {
        "url": "http://llama3.models.svc:8000/v1", "api": "chat",
        "apiKeySecretRef": {"name": "llama3-key", "key": "token"}}},
    "benchmarks": [{"name": "arc-easy", "dataset": {
        "uri": "s3://datasets/arc-easy.jsonl",
        "fields": {"prompt": "question", "choices": "choices", "reference": "answer"}},
        "task": "multiple-choice", "metrics": ["accuracy"], "limit": 500}],
    "parameters": {"temperature": 0, "maxTokens": 256, "concurrency": 16, "seed": 1234},
}


def test_same_keys_as_the_contract_example() -> None:
    example = contract_example()
    ours = config_for(CONTRACT_SPEC)
    assert set(ours) == set(example)
    assert shape(ours["model"]["endpoint"]) == shape(example["model"]["endpoint"])
    assert set(ours["benchmarks"][0]) == set(example["benchmarks"][0])
    assert set(ours["benchmarks"][0]["dataset"]) == set(example["benchmarks"][0]["dataset"])
    assert set(ours["output"]["s3"]) == set(example["output"]["s3"])


def test_same_values_as_the_contract_example_apart_from_the_uid() -> None:
    example = contract_example()
    ours = config_for(CONTRACT_SPEC)
    example["task"]["uid"] = UID
    example["output"]["s3"]["prefix"] = f"runs/team-a/llama3-8b-reasoning/{UID}/"
    assert json.loads(json.dumps(ours)) == example


def test_model_source_instead_of_endpoint() -> None:
    spec = {**CONTRACT_SPEC, "model": {"name": "m", "source": {"uri": "s3://models/m/"}}}
    model = config_for(spec)["model"]
    assert model == {"name": "m", "endpoint": None, "source": {"uri": "s3://models/m/"}}


def test_no_api_key_means_no_env_name() -> None:
    spec = {**CONTRACT_SPEC, "model": {"name": "m", "endpoint": {"url": "http://m/v1"}}}
    assert config_for(spec)["model"]["endpoint"]["apiKeyEnv"] is None


def test_missing_field_names_take_the_defaults() -> None:
    spec = {**CONTRACT_SPEC, "benchmarks": [{
        "name": "b", "dataset": {"uri": "https://example.org/b.csv", "format": "csv",
                                 "fields": {"prompt": "q"}},
        "task": "classification", "metrics": ["f1"], "labels": ["yes", "no"], "weight": 2}]}
    benchmark = config_for(spec)["benchmarks"][0]
    assert benchmark["dataset"] == {"uri": "https://example.org/b.csv", "format": "csv",
                                    "fields": {"prompt": "q", "choices": "choices",
                                               "reference": "reference"}}
    assert benchmark["labels"] == ["yes", "no"]
    assert benchmark["weight"] == 2.0
    assert benchmark["limit"] is None


def test_prefix_always_ends_with_a_slash_and_holds_the_uid() -> None:
    prefix = config_for(CONTRACT_SPEC)["output"]["s3"]["prefix"]
    assert prefix.endswith(f"/{UID}/")


def test_runner_endpoint_can_differ_from_the_operators() -> None:
    settings = OperatorSettings(s3_bucket="b", s3_endpoint="http://127.0.0.1:9000",
                                runner_s3_endpoint="http://minio.minio.svc:9000")
    parsed = parse_task_spec(CONTRACT_SPEC, settings)
    config = build_runner_config(
        parsed, name="t", namespace="n", uid=UID,
        location=results_location("b", "runs", "n", "t", UID), settings=settings)
    assert config["output"]["s3"]["endpointUrl"] == "http://minio.minio.svc:9000"
