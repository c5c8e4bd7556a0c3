"""The CRD file itself: every field explained, every list and string bounded, the status
the operator writes fully declared (undeclared status fields are pruned), and the examples
valid against the operator's own parser."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from evaluation_operator import naming
from evaluation_operator.config import OperatorSettings
from evaluation_operator.spec import Gate, parse_task_spec
from evaluation_operator.states import Reason
from evaluation_operator.status import Assessment, render_status

ROOT = Path(__file__).resolve().parents[2]
CRD = yaml.safe_load((ROOT / "crds" / "evaluation.dev_evaluationtasks.yaml").read_text())
VERSION = CRD["spec"]["versions"][0]
SCHEMA = VERSION["schema"]["openAPIV3Schema"]
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))


def walk(schema: dict[str, Any], path: str) -> Iterator[tuple[str, dict[str, Any]]]:
    yield path, schema
    for name, child in (schema.get("properties") or {}).items():
        yield from walk(child, f"{path}.{name}")
    if isinstance(schema.get("items"), dict):
        yield from walk(schema["items"], f"{path}[]")
    if isinstance(schema.get("additionalProperties"), dict):
        yield from walk(schema["additionalProperties"], f"{path}{{}}")


def test_names_match_the_design() -> None:
    names = CRD["spec"]["names"]
    assert CRD["metadata"]["name"] == f"{naming.PLURAL}.{naming.GROUP}"
    assert (names["kind"], names["plural"]) == (naming.KIND, naming.PLURAL)
    assert names["shortNames"] == ["evaltask", "evt"]
    assert names["categories"] == ["evaluation"]
    assert CRD["spec"]["scope"] == "Namespaced"
    assert VERSION["name"] == naming.VERSION and VERSION["subresources"] == {"status": {}}


def test_printer_columns() -> None:
    columns = {c["name"].upper(): c["jsonPath"] for c in VERSION["additionalPrinterColumns"]}
    assert columns["STATUS"] == ".status.phase"
    assert columns["PASSED"] == '.status.conditions[?(@.type=="Passed")].status'
    assert columns["OVERALL"] == ".status.overallScore"
    assert columns["MODEL"] == ".spec.model.name"
    assert columns["AGE"] == ".metadata.creationTimestamp"


def test_every_field_is_described() -> None:
    # metadata is the one exception: the API server forbids anything but its type.
    missing = [path for path, node in walk(SCHEMA, "") if path != ".metadata"
               and not node.get("description")]
    assert missing == []


def test_every_spec_string_and_list_is_bounded() -> None:
    """CEL cost estimates need maxLength/maxItems; without them a rule can exceed the budget."""
    unbounded = []
    for path, node in walk(SCHEMA["properties"]["spec"], "spec"):
        if node.get("type") == "string" and "maxLength" not in node and "enum" not in node:
            unbounded.append(path)
        if node.get("type") == "array" and "maxItems" not in node:
            unbounded.append(path)
        if isinstance(node.get("additionalProperties"), dict) and "maxProperties" not in node:
            unbounded.append(path)
    assert unbounded == []


def test_the_whole_spec_but_cancel_is_immutable() -> None:
    """CEL cannot compare an object minus one field, so the rule names every field: a field
    added to spec without being added to the rule would silently be mutable."""
    spec = SCHEMA["properties"]["spec"]
    rule = next(v["rule"] for v in spec["x-kubernetes-validations"]
                if "spec is immutable" in v.get("message", ""))
    for field in spec["properties"]:
        term = (f"(has(self.{field}) ? has(oldSelf.{field}) && self.{field} == "
                f"oldSelf.{field} : !has(oldSelf.{field}))")
        assert (term in rule) == (field != "cancel"), field
    cancel = spec["properties"]["cancel"]
    assert cancel["type"] == "boolean" and cancel["default"] is False
    assert [v["rule"] for v in cancel["x-kubernetes-validations"]] == ["self || !oldSelf"]


def declared_status_paths() -> set[str]:
    return {path for path, _ in walk(SCHEMA["properties"]["status"], "status")}


def paths_of(value: Any, path: str) -> Iterator[str]:
    yield path
    if isinstance(value, dict):
        for key, child in value.items():
            # map-valued fields (metrics) are declared through additionalProperties
            child_path = f"{path}{{}}" if path.endswith(".metrics") else f"{path}.{key}"
            yield from paths_of(child, child_path)
    elif isinstance(value, list):
        for item in value:
            yield from paths_of(item, f"{path}[]")


def test_everything_the_operator_writes_to_status_is_declared() -> None:
    scores = {"overallScore": 0.5, "benchmarks": [
        {"name": "a", "score": 0.5, "primaryMetric": "bleu", "metrics": {"bleu": 50.0},
         "samples": 3}]}
    previous = {"progress": {"samplesDone": 1, "samplesTotal": 2, "text": "1/2"}}
    status = render_status(
        previous, Assessment(Reason.SUCCEEDED, "done", scheduled=True,
                             start_time="2026-01-01T00:00:00Z"),
        generation=1, now="2026-01-01T00:00:01Z", job_name="j", configmap_name="c",
        results={"uri": "s3://b/p/", "bundle": "s3://b/p/results.zip",
                 "log": "s3://b/p/runner.log"}, scores=scores,
        gates=(Gate("a", "bleu", min=1), Gate(None, None, min=0.1, max=0.9)))
    assert status["gates"] and "Passed" in {c["type"] for c in status["conditions"]}
    undeclared = set(paths_of(status, "status")) - declared_status_paths()
    assert undeclared == set()


@pytest.mark.parametrize("example", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_examples_parse(example: Path) -> None:
    manifest = next(doc for doc in yaml.safe_load_all(example.read_text())
                    if doc["kind"] == naming.KIND)
    assert manifest["apiVersion"] == f"{naming.GROUP}/{naming.VERSION}"
    assert "namespace" not in manifest["metadata"], "examples apply to any namespace"
    parse_task_spec(manifest["spec"], OperatorSettings(s3_bucket="eval-results"))
