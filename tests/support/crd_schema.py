"""Check a value against the EvaluationTask CRD's OpenAPI schema, as the API server would.

Covers the keywords the CRD uses (type, properties, additionalProperties, items, enum,
required, format date-time, bounds, list-map keys). A property the schema does not declare
counts as an error here: the API server would silently prune it, and a status that loses
fields on the way in is as wrong as one that is refused.
"""

from __future__ import annotations

import math
import re
from functools import cache
from typing import Any

import yaml
from devcluster.tools import REPO_ROOT

CRD = REPO_ROOT / "crds" / "evaluation.dev_evaluationtasks.yaml"
_DATE_TIME = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$")
_INT64 = 2**63


@cache
def task_schema() -> dict[str, Any]:
    for doc in yaml.safe_load_all(CRD.read_text()):
        if doc and doc.get("kind") == "CustomResourceDefinition":
            schema: dict[str, Any] = doc["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
            return schema
    raise AssertionError(f"no CustomResourceDefinition in {CRD}")


def status_schema() -> dict[str, Any]:
    schema: dict[str, Any] = task_schema()["properties"]["status"]
    return schema


def _type_error(value: Any, kind: str) -> bool:
    if kind == "object":
        return not isinstance(value, dict)
    if kind == "array":
        return not isinstance(value, list)
    if kind == "string":
        return not isinstance(value, str)
    if kind == "boolean":
        return not isinstance(value, bool)
    if kind == "integer":
        return isinstance(value, bool) or not isinstance(value, int) or not (
            -_INT64 <= value < _INT64)
    if kind == "number":
        return isinstance(value, bool) or not isinstance(value, int | float) or (
            isinstance(value, float) and not math.isfinite(value))
    return False


def errors(value: Any, schema: dict[str, Any], path: str = "status") -> list[str]:
    """Every way `value` breaks `schema`, as `path: problem` lines; empty when it is valid."""
    found: list[str] = []
    kind = schema.get("type")
    if kind and _type_error(value, kind):
        return [f"{path}: expected {kind}, got {type(value).__name__} {value!r:.80}"]
    if "enum" in schema and value not in schema["enum"]:
        found.append(f"{path}: {value!r:.80} not in {schema['enum']}")
    if isinstance(value, str):
        if schema.get("format") == "date-time" and not _DATE_TIME.match(value):
            found.append(f"{path}: {value!r:.80} is not a date-time")
        if len(value) > schema.get("maxLength", math.inf):
            found.append(f"{path}: longer than {schema['maxLength']}")
        if len(value) < schema.get("minLength", 0):
            found.append(f"{path}: shorter than {schema['minLength']}")
        if "pattern" in schema and not re.search(schema["pattern"], value):
            found.append(f"{path}: {value!r:.80} does not match {schema['pattern']}")
        try:
            value.encode()
        except UnicodeEncodeError:
            found.append(f"{path}: not valid UTF-8")
    if isinstance(value, int | float) and not isinstance(value, bool):
        if value < schema.get("minimum", -math.inf):
            found.append(f"{path}: {value} below {schema['minimum']}")
        if value > schema.get("maximum", math.inf):
            found.append(f"{path}: {value} above {schema['maximum']}")
    if isinstance(value, dict):
        for key in schema.get("required", []):
            if key not in value:
                found.append(f"{path}: {key} is required")
        properties = schema.get("properties")
        extra = schema.get("additionalProperties")
        for key, item in value.items():
            if properties is not None and key in properties:
                found += errors(item, properties[key], f"{path}.{key}")
            elif isinstance(extra, dict):
                found += errors(item, extra, f"{path}.{key}")
            elif not schema.get("x-kubernetes-preserve-unknown-fields"):
                found.append(f"{path}.{key}: not in the schema (the API server prunes it)")
    if isinstance(value, list):
        if len(value) > schema.get("maxItems", math.inf):
            found.append(f"{path}: more than {schema['maxItems']} items")
        for index, item in enumerate(value):
            found += errors(item, schema.get("items", {}), f"{path}[{index}]")
        keys = schema.get("x-kubernetes-list-map-keys")
        if keys and all(isinstance(item, dict) for item in value):
            seen = [tuple(item.get(k) for k in keys) for item in value]
            if len(seen) != len(set(seen)):
                found.append(f"{path}: duplicate list-map keys {keys}")
    return found
