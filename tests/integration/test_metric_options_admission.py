"""Metric options at admission: the CRD's enums and CEL rules (from the runner's metric
registry) reject bad ones naming the field, and accept the documented example."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from devcluster.cluster import Cluster

from tests.integration.conftest import task_manifest

pytestmark = pytest.mark.cluster
ROOT = Path(__file__).resolve().parents[2]


def _generation(**extra: Any) -> dict[str, Any]:
    return {"name": "gen", "dataset": {"uri": "s3://datasets/gen.jsonl"}, "task": "generation",
            "metrics": ["bleu", "exact-match"], **extra}


REJECTIONS = [
    ("acc-norm-on-generation", _generation(metrics=["acc-norm"]), "spec.benchmarks[0]",
     "acc-norm applies to multiple-choice benchmarks only"),
    ("rouge-lsum-on-multiple-choice",
     {"name": "mc", "dataset": {"uri": "s3://datasets/mc.jsonl"}, "task": "multiple-choice",
      "metrics": ["rouge-lsum"]}, "spec.benchmarks[0]",
     "multiple-choice benchmarks support the metrics"),
    ("binary-f1-without-label", _generation(metricOptions={"f1": {"average": "binary"}}),
     "spec.benchmarks[0].metricOptions.f1", "f1.average binary needs f1.positiveLabel"),
    ("squad-with-lm-eval-flags", _generation(metricOptions={"exactMatch": {
        "normalize": "squad", "ignoreCase": True}}), "spec.benchmarks[0].metricOptions.exactMatch",
     "apply with normalize none"),
    ("unknown-bleu-tokenizer", _generation(metricOptions={"bleu": {"tokenize": "moses"}}),
     "spec.benchmarks[0].metricOptions.bleu.tokenize", "Unsupported value: \"moses\""),
    ("too-many-bootstrap-iterations", _generation(metricOptions={
        "bootstrapIterations": 1_000_000}), "spec.benchmarks[0].metricOptions.bootstrapIterations",
     "less than or equal to 100000"),
    ("bad-language", _generation(language="Chinese"), "spec.benchmarks[0].language",
     "should match"),
]


@pytest.mark.parametrize(("case", "benchmark", "field", "message"), REJECTIONS,
                         ids=[r[0] for r in REJECTIONS])
def test_bad_metric_options_are_rejected_naming_the_field(
        cluster: Cluster, case: str, benchmark: dict[str, Any], field: str,
        message: str) -> None:
    manifest = task_manifest(f"metric-{case}", benchmarks=[benchmark])
    result = cluster.kubectl("create", "--dry-run=server", "--validate=strict", "-n", "default",
                             "-f", "-", input=json.dumps(manifest), check=False)
    assert result.returncode != 0, f"{case} was accepted"
    assert field in result.stderr, result.stderr
    assert message in result.stderr, result.stderr


def test_the_metric_options_example_is_accepted_with_defaults(cluster: Cluster) -> None:
    manifest = yaml.safe_load((ROOT / "examples" / "06-metric-options.yaml").read_text())
    result = cluster.kubectl("create", "--dry-run=server", "--validate=strict", "-n",
                             "default", "-o", "json", "-f", "-", input=json.dumps(manifest))
    benchmarks = {b["name"]: b for b in json.loads(result.stdout)["spec"]["benchmarks"]}
    assert benchmarks["wmt-en-zh"]["metricOptions"]["bootstrapIterations"] == 2000
    assert benchmarks["triviaqa"]["metricOptions"]["bootstrapIterations"] == 1000  # default
    assert benchmarks["spam"]["metricOptions"]["f1"] == {"average": "binary",
                                                         "positiveLabel": "spam"}
