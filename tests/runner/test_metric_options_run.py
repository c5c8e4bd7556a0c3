"""Metric options end to end: the runner as the Job runs it, on a Chinese benchmark with
several references per sample, scored exactly as sacrebleu and rouge-score score it."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import sacrebleu
from devcluster.fake_llm import FakeLLM
from rouge_score import rouge_scorer

from tests.runner.conftest import DATA_BUCKET, RESULTS_BUCKET, base_config, run_runner
from tests.support.s3 import S3Endpoint

ROWS: list[dict[str, Any]] = [
    {"prompt": "Translate: Tokyo is the capital of Japan.",
     "reference": ["东京是日本的首都。", "日本的首都是东京。"]},
    {"prompt": "Translate: I like apples.", "reference": ["我喜欢苹果。"]},
    {"prompt": "Translate: Good morning.", "reference": ["早上好。", "早安。"]},
]
REPLIES = {"Tokyo": "日本的首都是东京。", "apples": "我爱吃苹果。", "morning": "早安!"}


def test_a_chinese_benchmark_with_several_references(
    tmp_path: Path, llm: FakeLLM, runner_buckets: S3Endpoint
) -> None:
    prefix = f"runs/ns/zh/{uuid.uuid4()}/"
    key = f"{prefix}zh.jsonl"
    runner_buckets.client().put_object(
        Bucket=DATA_BUCKET, Key=key,
        Body="".join(json.dumps(r, ensure_ascii=False) + "\n" for r in ROWS).encode())
    llm.answers = REPLIES
    config = base_config(llm.url, runner_buckets, prefix, [
        {"name": "en-zh", "dataset": {"uri": f"s3://{DATA_BUCKET}/{key}"},
         "task": "generation", "metrics": ["bleu", "rouge-l", "exact-match"],
         "language": "zh", "metricOptions": {"bootstrapIterations": 200}}])
    result = run_runner(tmp_path, config, runner_buckets)
    assert result.exit_code == 0, result.stderr

    predictions = [REPLIES["Tokyo"], REPLIES["apples"], REPLIES["morning"]]
    streams = [[r["reference"][0] for r in ROWS],
               [r["reference"][1] if len(r["reference"]) > 1 else None for r in ROWS]]
    bleu = sacrebleu.corpus_bleu(predictions, streams, tokenize="zh").score
    assert bleu > 30  # 13a would score a perfect Chinese answer 0
    read = runner_buckets.client().get_object
    metrics = json.loads(read(Bucket=RESULTS_BUCKET,
                              Key=prefix + "benchmarks/en-zh/metrics.json")["Body"].read())
    assert metrics["metrics"]["bleu"] == bleu
    assert metrics["stderr"]["bleu"] > 0  # bootstrap, 200 resamples
    assert metrics["metrics"]["exact-match"] == 1 / 3  # the first answer matches reference 2
    assert metrics["metricOptions"]["bleu"]["tokenize"] == "zh"
    assert metrics["metricOptions"]["rouge"]["tokenizer"] == "unicode"
    assert metrics["metricInfo"]["bleu"] == {"scale": 100.0, "higherIsBetter": True,
                                             "stderr": "bootstrap",
                                             "reference": "sacrebleu corpus_score"}
    from evaluation_runner.metrics import RougeOptions, rouge_scorer_for

    scorer = rouge_scorer.RougeScorer(
        ["rougeL"], tokenizer=rouge_scorer_for(RougeOptions("unicode"))._tokenizer)
    expected = [scorer.score_multi(r["reference"], p)["rougeL"].fmeasure
                for p, r in zip(predictions, ROWS, strict=True)]
    assert abs(metrics["metrics"]["rouge-l"] - sum(expected) / 3) < 1e-12
    samples = [json.loads(line) for line in read(
        Bucket=RESULTS_BUCKET, Key=prefix + "benchmarks/en-zh/samples.jsonl")["Body"].read()
        .decode().splitlines()]
    assert samples[0]["references"] == ROWS[0]["reference"]
    assert "references" not in samples[1]
