"""The runner as the Job runs it: `python -m evaluation_runner --config ...` in a subprocess,
against a scripted OpenAI-compatible server and a real S3 HTTP endpoint (moto)."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import statistics
import zipfile
from pathlib import Path
from typing import Any

import sacrebleu
from devcluster.fake_llm import FakeLLM
from rouge_score import rouge_scorer
from sklearn.metrics import f1_score

from tests.runner.conftest import DATA_BUCKET, RESULTS_BUCKET, base_config, run_runner
from tests.support.s3 import S3Endpoint

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
]
GEN_ROWS = [
    {"src": "Translate: Hallo Welt", "tgt": "Hello world"},
    {"src": "Translate: Guten Morgen", "tgt": "Good morning"},
    {"src": "Translate: Danke schön", "tgt": "Thank you very much"},
    {"src": "Translate: Gute Nacht", "tgt": "Good night"},
]
# What the scripted model says for each generation prompt: some right, some partly.
GEN_REPLIES = {"Hallo Welt": "Hello world", "Guten Morgen": "Good morning to you",
               "Danke schön": "Thanks a lot", "Gute Nacht": "Good night"}
LETTERS = "ABCD"


def _objects(s3: S3Endpoint, prefix: str) -> dict[str, bytes]:
    client = s3.client()
    found = {}
    listing = client.list_objects_v2(Bucket=RESULTS_BUCKET, Prefix=prefix)
    for item in listing.get("Contents", []):
        found[item["Key"][len(prefix):]] = client.get_object(
            Bucket=RESULTS_BUCKET, Key=item["Key"])["Body"].read()
    return found


def test_full_run_scores_bundle_and_termination_message(
        llm: FakeLLM, runner_buckets: S3Endpoint, tmp_path: Path) -> None:
    s3 = runner_buckets
    right = {"Capital of France?", "2 + 2 =", "Colour of the sky?"}  # 3 of 5 right
    for row in MC_ROWS:
        correct = int(row["answer"])
        letter = correct if row["question"] in right else (correct + 1) % 4
        llm.answers[f"Question: {row['question']}"] = f"The answer is ({LETTERS[letter]})."
    llm.answers.update(GEN_REPLIES)
    s3.client().put_object(Bucket=DATA_BUCKET, Key="e2e/mc.jsonl", Body="".join(
        json.dumps(r) + "\n" for r in MC_ROWS).encode())
    gen_path = tmp_path / "gen.jsonl"
    gen_path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in GEN_ROWS))
    prefix = "runs/team-a/e2e-bundle/uid-1/"
    config = base_config(llm.url, s3, prefix, [
        {"name": "arc-mini", "task": "multiple-choice", "metrics": ["accuracy", "f1"],
         "dataset": {"uri": f"s3://{DATA_BUCKET}/e2e/mc.jsonl", "format": None,
                     "fields": {"prompt": "question", "choices": "options",
                                "reference": "answer"}}, "weight": 3.0},
        {"name": "translate", "task": "generation",
         "metrics": ["bleu", "chrf", "exact-match", "rouge-l"],
         "dataset": {"uri": str(gen_path), "format": "jsonl",
                     "fields": {"prompt": "src", "reference": "tgt"}}, "weight": 1.0},
    ])

    result = run_runner(tmp_path, config, s3)

    assert result.exit_code == 0, result.stderr
    # Expected figures, computed independently with the reference libraries.
    refs_mc = [str(r["options"][int(r["answer"])]) for r in MC_ROWS]
    preds_mc = [ref if r["question"] in right else
                str(r["options"][(int(r["answer"]) + 1) % 4])
                for r, ref in zip(MC_ROWS, refs_mc, strict=True)]
    accuracy = 3 / 5
    macro_f1 = f1_score(refs_mc, preds_mc, labels=sorted(set(refs_mc)), average="macro",
                        zero_division=0)
    preds_gen = [GEN_REPLIES[str(r["src"]).removeprefix("Translate: ")] for r in GEN_ROWS]
    refs_gen = [str(r["tgt"]) for r in GEN_ROWS]
    bleu = sacrebleu.corpus_bleu(preds_gen, [refs_gen]).score
    chrf = sacrebleu.corpus_chrf(preds_gen, [refs_gen]).score
    scorer = rouge_scorer.RougeScorer(["rougeL"])
    rouge_l = [scorer.score(r, p)["rougeL"].fmeasure for p, r in
               zip(preds_gen, refs_gen, strict=True)]
    overall = (accuracy * 3 + (bleu / 100) * 1) / 4

    message = result.termination
    assert message["v"] == 1 and message["status"] == "Succeeded"
    assert math.isclose(message["overallScore"], overall, rel_tol=1e-9)
    assert message["results"] == {"uri": f"s3://{RESULTS_BUCKET}/{prefix}",
                                  "bundle": f"s3://{RESULTS_BUCKET}/{prefix}results.zip",
                                  "log": f"s3://{RESULTS_BUCKET}/{prefix}runner.log"}
    by_name = {b["name"]: b for b in message["benchmarks"]}
    assert by_name["arc-mini"]["score"] == accuracy
    assert by_name["arc-mini"]["primaryMetric"] == "accuracy"
    assert by_name["arc-mini"]["samples"] == 5
    assert math.isclose(by_name["arc-mini"]["metrics"]["f1"], macro_f1)
    assert by_name["translate"]["metrics"]["bleu"] == bleu
    assert math.isclose(by_name["translate"]["score"], bleu / 100)
    assert len(json.dumps(message).encode()) <= 4096

    files = _objects(s3, prefix)
    expected = {"summary.json", "summary.csv", "results.zip", "progress.json",
                "benchmarks/arc-mini/metrics.json", "benchmarks/arc-mini/samples.jsonl",
                "benchmarks/translate/metrics.json", "benchmarks/translate/samples.jsonl"}
    expected.add("runner.log")
    assert expected <= set(files), sorted(files)
    checkpoints = {key for key in files if key.startswith("checkpoints/")}
    assert {key.split("/")[1] for key in checkpoints} == {"arc-mini", "translate"}
    assert all(key in expected | checkpoints for key in files), "wrote outside the layout"

    summary = json.loads(files["summary.json"])
    assert math.isclose(summary["overallScore"], overall, rel_tol=1e-9)
    translate = next(b for b in summary["benchmarks"] if b["name"] == "translate")
    assert translate["metrics"]["bleu"] == bleu
    assert translate["metrics"]["chrf"] == chrf
    assert translate["metrics"]["exact-match"] == 0.5
    assert math.isclose(translate["metrics"]["rouge-l"], statistics.fmean(rouge_l))
    assert math.isclose(translate["stderr"]["rouge-l"],
                        statistics.stdev(rouge_l) / math.sqrt(len(rouge_l)))
    assert math.isclose(translate["stderr"]["exact-match"], 0.5 / math.sqrt(4) *
                        math.sqrt(4 / 3))
    assert translate["weight"] == 1.0 and translate["samples"] == 4
    arc = next(b for b in summary["benchmarks"] if b["name"] == "arc-mini")
    assert math.isclose(arc["stderr"]["accuracy"],
                        statistics.stdev([1, 1, 0, 1, 0]) / math.sqrt(5))
    datasets = {d["name"]: d for d in summary["datasets"]}

    assert datasets["translate"]["sha256"] == hashlib.sha256(
        gen_path.read_bytes()).hexdigest()
    assert datasets["arc-mini"]["uri"] == f"s3://{DATA_BUCKET}/e2e/mc.jsonl"
    assert datasets["arc-mini"]["samples"] == 5
    assert summary["framework"]["name"] == "builtin" and summary["framework"]["version"]
    assert summary["model"]["name"] == "tiny"
    assert "endpoint" in summary["model"] and "apiKey" not in json.dumps(summary)
    assert summary["parameters"]["seed"] == 1
    assert summary["timings"]["seconds"] >= 0 and summary["timings"]["startedAt"]

    rows = list(csv.DictReader(io.StringIO(files["summary.csv"].decode())))
    assert {(r["benchmark"], r["metric"]) for r in rows} == {
        ("arc-mini", "accuracy"), ("arc-mini", "f1"), ("translate", "bleu"),
        ("translate", "chrf"), ("translate", "exact-match"), ("translate", "rouge-l")}
    bleu_row = next(r for r in rows if r["metric"] == "bleu")
    assert float(bleu_row["value"]) == bleu and bleu_row["samples"] == "4"

    samples = [json.loads(line) for line in
               files["benchmarks/arc-mini/samples.jsonl"].decode().splitlines()]
    assert [s["prediction"] for s in samples] == preds_mc
    assert [s["reference"] for s in samples] == refs_mc
    metrics = json.loads(files["benchmarks/translate/metrics.json"])
    assert metrics["metrics"]["chrf"] == chrf

    with zipfile.ZipFile(io.BytesIO(files["results.zip"])) as archive:
        assert archive.testzip() is None
        names = set(archive.namelist())
        assert expected - {"results.zip", "progress.json"} <= names
        assert json.loads(archive.read("summary.json")) == summary

    progress = json.loads(files["progress.json"])
    assert progress["samplesDone"] == progress["samplesTotal"] == 9
    translate_progress = progress["benchmarks"]["translate"]
    assert (translate_progress["samplesDone"], translate_progress["samplesTotal"]) == (4, 4)
    assert translate_progress["state"] == "Completed"
    assert translate_progress["startedAt"] <= translate_progress["finishedAt"]
