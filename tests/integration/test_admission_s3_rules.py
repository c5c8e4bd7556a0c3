"""The CRD's S3 bucket and prefix rules and the operator's (spec.py) are one set of rules:
both judge one table of values, on the real API server, and must agree on every one."""

from __future__ import annotations

import json
from typing import Any

import pytest
from devcluster.cluster import Cluster
from evaluation_operator.config import OperatorSettings
from evaluation_operator.spec import SpecError, bucket_problem, parse_task_spec, prefix_problem
from kubernetes import client
from kubernetes.client.rest import ApiException

from tests.integration.conftest import task_manifest

pytestmark = pytest.mark.cluster

BUCKETS = [
    "eval-results", "abc", "a" * 63, "a" * 64, "ab", "eval.results", "eval..results",
    "eval-.results", "eval.-results", "192.168.1.10", "192.168.1", "1.2.3.4.5", "xn--results",
    "results-xn--", "team-a-s3alias", "s3alias-team", "Eval-Results", "eval_results",
    "-eval", "eval-", ".eval", "eval.", "eval results", "0eval9", "ev\u00e9l",
]
PREFIXES = [
    "", "runs", "runs/", "teams/nlp", "teams/nlp/", "/runs", "../x", "runs/../x", "runs/..",
    "..", "a..b", "runs/.../x", "runs//x", "runs//", "runs/./x", "runs with space",
    "runs!_.*'()-", "runs?", "runs#1", "r\u00fcns", "runs\\x", "a/b/c/d/e/f",
]


def _admitted(cluster: Cluster, s3: dict[str, Any]) -> bool:
    api = client.CustomObjectsApi(cluster.api_client())
    body = task_manifest("s3-rules", output={"s3": s3})
    try:
        api.create_namespaced_custom_object("evaluation.dev", "v1alpha1", "default",
                                            "evaluationtasks", body, dry_run="All")
        return True
    except ApiException as error:
        assert error.status == 422, error.body
        assert "spec.output.s3" in json.loads(error.body)["message"], error.body
        return False


def _operator_accepts(s3: dict[str, Any]) -> bool:
    spec = task_manifest("s3-rules", output={"s3": s3})["spec"]
    try:
        parse_task_spec(spec, OperatorSettings(s3_bucket="eval-results"))
        return True
    except SpecError as error:
        assert error.field.startswith("spec.output.s3"), error
        return False


@pytest.mark.parametrize("bucket", BUCKETS)
def test_bucket_rules_agree(cluster: Cluster, bucket: str) -> None:
    admitted = _admitted(cluster, {"bucket": bucket})
    assert admitted == _operator_accepts({"bucket": bucket}) == (bucket_problem(bucket) is None)


@pytest.mark.parametrize("prefix", PREFIXES)
def test_prefix_rules_agree(cluster: Cluster, prefix: str) -> None:
    admitted = _admitted(cluster, {"prefix": prefix})
    assert admitted == _operator_accepts({"prefix": prefix}) == (prefix_problem(prefix) is None)


def test_the_table_holds_both_answers() -> None:
    """A table where every value passes (or every one fails) proves nothing."""
    for values, problem in ((BUCKETS, bucket_problem), (PREFIXES, prefix_problem)):
        verdicts = {problem(v) is None for v in values}
        assert verdicts == {True, False}
