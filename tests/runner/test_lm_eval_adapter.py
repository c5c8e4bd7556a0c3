"""framework: lm-eval. The adapter builds an lm-eval task from our dataset, runs it through
lm-eval's OpenAI-compatible API models against a scripted vLLM-like server (completions with
echo logprobs, chat, and vLLM's /tokenize endpoints), and produces the usual bundle."""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.runner.conftest import RESULTS_BUCKET, base_config, run_runner
from tests.support.requirements import require_module
from tests.support.s3 import S3Endpoint

require_module("lm_eval")

_TOKEN = re.compile(r"\s*\S+|\s+")
CORRECT = {"Paris", "4", "Pacific", "Blue"}
MC_ROWS = [
    {"question": "Capital of France?", "choices": ["Berlin", "Paris", "Rome"], "answer": 1},
    {"question": "2 + 2 =", "choices": ["4", "5", "22"], "answer": 0},
    {"question": "Largest ocean?", "choices": ["Pacific", "Atlantic", "Indian"], "answer": 1},
    {"question": "Colour of the sky?", "choices": ["Green", "Blue", "Red"], "answer": 1},
]  # the model's favourite is right for rows 0, 1, 3 and wrong for row 2: accuracy 0.75


class VllmLike:
    """Whitespace tokenizer with a growing vocabulary, as vLLM's /tokenize would serve."""

    def __init__(self) -> None:
        self.vocab: dict[str, int] = {}
        self.words: list[str] = []
        self.answers: dict[str, str] = {}
        self.lock = threading.Lock()
        self.completions = 0
        self.chats = 0

    def encode(self, text: str) -> list[int]:
        with self.lock:
            ids = []
            for piece in _TOKEN.findall(text):
                if piece not in self.vocab:
                    self.vocab[piece] = len(self.words)
                    self.words.append(piece)
                ids.append(self.vocab[piece])
            return ids

    def decode(self, ids: list[int]) -> str:
        return "".join(self.words[i] for i in ids)

    def echo(self, prompt: Any) -> dict[str, Any]:
        tokens = [self.words[i] for i in prompt] if isinstance(prompt, list) else \
            _TOKEN.findall(prompt)
        tokens = [*tokens, " x"]  # the one generated token (max_tokens=1)
        values = [None] + [-0.1 if t.strip() in CORRECT else -2.0 for t in tokens[1:]]
        return {"text": "".join(tokens), "logprobs": {
            "tokens": tokens, "token_logprobs": values,
            "top_logprobs": [None] + [{t: v} for t, v in zip(tokens[1:], values[1:],
                                                                strict=True)]}}

    def answer(self, prompt: str) -> str:
        last = prompt.rsplit("\n\n", 1)[-1]
        return next((a for k, a in self.answers.items() if k in last), "no idea")


def _server(model: VllmLike) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def _send(self, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            self._send({"eos_token": "</s>", "bos_token": None, "pad_token": None})

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            if self.path == "/tokenize":
                self._send({"tokens": model.encode(body["prompt"])})
            elif self.path == "/detokenize":
                self._send({"prompt": model.decode(body["tokens"])})
            elif self.path.endswith("/chat/completions"):
                model.chats += 1
                text = model.answer(body["messages"][-1]["content"])
                self._send({"choices": [{"index": 0, "message": {"role": "assistant",
                                                                  "content": text}}]})
            else:
                model.completions += 1
                prompts = body["prompt"]
                if not isinstance(prompts, list) or (prompts and isinstance(prompts[0], int)):
                    prompts = [prompts]
                if body.get("echo"):
                    choices = [{"index": i, **model.echo(p)} for i, p in enumerate(prompts)]
                else:
                    choices = [{"index": i, "text": model.answer(p if isinstance(p, str)
                                                                 else model.decode(p))}
                               for i, p in enumerate(prompts)]
                self._send({"choices": choices})

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.fixture
def vllm() -> Iterator[tuple[VllmLike, str]]:
    model = VllmLike()
    server = _server(model)
    yield model, f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()
    server.server_close()


def _summary(s3: S3Endpoint, prefix: str) -> dict[str, Any]:
    body = s3.client().get_object(Bucket=RESULTS_BUCKET, Key=f"{prefix}summary.json")["Body"]
    result: dict[str, Any] = json.loads(body.read())
    return result


def test_lm_eval_multiple_choice_by_loglikelihood(
        vllm: tuple[VllmLike, str], runner_buckets: S3Endpoint, tmp_path: Path) -> None:
    model, url = vllm
    data = tmp_path / "mc.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in MC_ROWS))
    prefix = "runs/lm-eval/mc/"
    config = base_config(url, runner_buckets, prefix, [
        {"name": "arc-mini", "task": "multiple-choice", "metrics": ["accuracy"],
         "dataset": {"uri": str(data), "format": None,
                     "fields": {"prompt": "question", "reference": "answer"}},
         "limit": None, "weight": 1.0, "fewShot": 0, "labels": None}],
        api="completions", framework={"name": "lm-eval"})

    result = run_runner(tmp_path, config, runner_buckets,
                        env={"HF_HOME": str(tmp_path / "hf")})

    assert result.exit_code == 0, result.stderr[-3000:]
    assert result.termination["status"] == "Succeeded"
    assert result.termination["benchmarks"][0]["metrics"] == {"accuracy": 0.75}
    summary = _summary(runner_buckets, prefix)
    assert summary["framework"]["name"] == "lm-eval"
    assert summary["framework"]["version"]
    # lm-eval's own accuracy agrees with ours over its answers.
    assert summary["framework"]["frameworkResults"]["arc-mini"]["acc,none"] == 0.75
    assert model.completions >= 4 * 3


def test_lm_eval_generation_on_chat(
        vllm: tuple[VllmLike, str], runner_buckets: S3Endpoint, tmp_path: Path) -> None:
    model, url = vllm
    model.answers = {"Hallo Welt": "Hello world", "Guten Morgen": "Good morning you"}
    rows = [{"prompt": "Translate: Hallo Welt", "reference": "Hello world"},
            {"prompt": "Translate: Guten Morgen", "reference": "Good morning"}]
    data = tmp_path / "gen.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    prefix = "runs/lm-eval/gen/"
    config = base_config(url, runner_buckets, prefix, [
        {"name": "translate", "task": "generation", "metrics": ["exact-match", "f1"],
         "dataset": {"uri": str(data), "format": None, "fields": {}},
         "limit": None, "weight": 1.0, "fewShot": 0, "labels": None}],
        framework={"name": "lm-eval"})

    result = run_runner(tmp_path, config, runner_buckets,
                        env={"HF_HOME": str(tmp_path / "hf")})

    assert result.exit_code == 0, result.stderr[-3000:]
    metrics = result.termination["benchmarks"][0]["metrics"]
    assert metrics["exact-match"] == 0.5
    assert metrics["f1"] == pytest.approx((1.0 + 0.8) / 2)  # "good morning you" vs ref


def test_lm_eval_multiple_choice_on_chat_is_a_configuration_error_before_any_work(
        vllm: tuple[VllmLike, str], runner_buckets: S3Endpoint, tmp_path: Path) -> None:
    model, url = vllm
    data = tmp_path / "mc.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in MC_ROWS))
    config = base_config(url, runner_buckets, "runs/lm-eval/bad/", [
        {"name": "first", "task": "generation", "metrics": ["exact-match"],
         "dataset": {"uri": str(data), "format": None,
                     "fields": {"prompt": "question", "reference": "answer"}},
         "limit": None, "weight": 1.0, "fewShot": 0, "labels": None},
        {"name": "arc-mini", "task": "multiple-choice", "metrics": ["accuracy"],
         "dataset": {"uri": str(data), "format": None,
                     "fields": {"prompt": "question", "reference": "answer"}},
         "limit": None, "weight": 1.0, "fewShot": 0, "labels": None}],
        api="chat", framework={"name": "lm-eval"})

    result = run_runner(tmp_path, config, runner_buckets)

    assert result.exit_code == 78
    assert result.termination["reason"] == "ConfigurationError"
    assert "benchmarks[1].task" in result.termination["message"]
    assert "completions" in result.termination["message"]
    assert model.completions == model.chats == 0, "a benchmark ran before the error"


def test_the_image_has_an_lm_eval_variant_pinned_like_the_tests() -> None:
    from importlib import metadata

    root = Path(__file__).resolve().parents[2] / "runner-image"
    dockerfile = (root / "Dockerfile").read_text()
    assert "ARG WITH_LM_EVAL=false" in dockerfile
    assert "requirements-lm-eval.txt" in dockerfile
    pins = dict(line.split("==") for line in (root / "requirements-lm-eval.txt").read_text()
                .splitlines() if "==" in line and not line.startswith("#"))
    assert pins["lm-eval[api]"] == metadata.version("lm_eval")
    # The default image stays small: lm-eval is not in the base requirements.
    assert "lm-eval" not in (root / "requirements.txt").read_text()


def test_lm_eval_few_shot_uses_the_first_rows_and_does_not_score_them(
        vllm: tuple[VllmLike, str], runner_buckets: S3Endpoint, tmp_path: Path) -> None:
    model, url = vllm
    model.answers = {"Gute Nacht": "Good night", "Danke": "Thanks"}
    rows = [{"prompt": "Translate: Hallo Welt", "reference": "Hello world"},
            {"prompt": "Translate: Gute Nacht", "reference": "Good night"},
            {"prompt": "Translate: Danke", "reference": "Thank you"},
            {"prompt": "Translate: Tschüss", "reference": "Bye"}]
    data = tmp_path / "gen.jsonl"
    data.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    prefix = "runs/lm-eval/fewshot/"
    config = base_config(url, runner_buckets, prefix, [
        {"name": "translate", "task": "generation", "metrics": ["exact-match"],
         "dataset": {"uri": str(data), "format": None, "fields": {}},
         "limit": 2, "weight": 1.0, "fewShot": 1, "labels": None}],
        api="completions", framework={"name": "lm-eval"})

    result = run_runner(tmp_path, config, runner_buckets,
                        env={"HF_HOME": str(tmp_path / "hf")})

    assert result.exit_code == 0, result.stderr[-3000:]
    assert result.termination["benchmarks"][0]["samples"] == 2  # row 0 is the example
    assert result.termination["benchmarks"][0]["metrics"]["exact-match"] == 0.5
    samples = [json.loads(line) for line in runner_buckets.client().get_object(
        Bucket=RESULTS_BUCKET, Key=f"{prefix}benchmarks/translate/samples.jsonl"
    )["Body"].read().decode().splitlines()]
    assert [s["reference"] for s in samples] == ["Good night", "Thank you"]
    # the example row is in every prompt lm-eval sent, ahead of the question
    assert all(s["prompt"].startswith("Translate: Hallo Welt\nHello world\n\n")
               for s in samples), samples[0]["prompt"]


def test_lm_eval_against_an_unreachable_model_is_transient(
        runner_buckets: S3Endpoint, tmp_path: Path) -> None:
    data = tmp_path / "gen.jsonl"
    data.write_text('{"prompt": "Translate: Hallo", "reference": "Hello"}\n')
    config = base_config("http://127.0.0.1:9/v1", runner_buckets, "runs/lm-eval/down/", [
        {"name": "translate", "task": "generation", "metrics": ["exact-match"],
         "dataset": {"uri": str(data), "format": None, "fields": {}},
         "limit": None, "weight": 1.0, "fewShot": 0, "labels": None}],
        framework={"name": "lm-eval"})
    config["model"]["endpoint"]["maxRetries"] = 1

    result = run_runner(tmp_path, config, runner_buckets,
                        env={"HF_HOME": str(tmp_path / "hf")})

    assert result.exit_code == 75, result.stderr[-3000:]
    assert result.termination["reason"] == "ModelUnreachable"
    assert "127.0.0.1:9" in result.termination["message"]


def test_lm_eval_classification_maps_answers_onto_labels(
        vllm: tuple[VllmLike, str], runner_buckets: S3Endpoint, tmp_path: Path) -> None:
    from sklearn.metrics import f1_score

    model, url = vllm
    model.answers = {"I loved it": "Positive.", "Awful {food}": "negative",
                     "It was fine": "The review is positive"}
    rows = [{"text": "I loved it", "label": "positive"},
            {"text": "Awful {food}", "label": "negative"},
            {"text": "It was fine", "label": "neutral"}]
    data = tmp_path / "cls.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    prefix = "runs/lm-eval/cls/"
    config = base_config(url, runner_buckets, prefix, [
        {"name": "sentiment", "task": "classification", "metrics": ["accuracy", "f1"],
         "dataset": {"uri": str(data), "format": None,
                     "fields": {"prompt": "text", "reference": "label"}},
         "limit": None, "weight": 1.0, "fewShot": 0,
         "labels": ["positive", "negative", "neutral"]}],
        framework={"name": "lm-eval"})

    result = run_runner(tmp_path, config, runner_buckets,
                        env={"HF_HOME": str(tmp_path / "hf")})

    assert result.exit_code == 0, result.stderr[-3000:]
    metrics = result.termination["benchmarks"][0]["metrics"]
    predictions, references = ["positive", "negative", "positive"], [r["label"] for r in rows]
    assert metrics["accuracy"] == pytest.approx(2 / 3)
    assert metrics["f1"] == pytest.approx(f1_score(
        references, predictions, labels=["positive", "negative", "neutral"], average="macro",
        zero_division=0))
    samples = runner_buckets.client().get_object(
        Bucket=RESULTS_BUCKET, Key=f"{prefix}benchmarks/sentiment/samples.jsonl")["Body"].read()
    first = json.loads(samples.decode().splitlines()[1])
    assert first["prompt"].endswith("Answer with one of: positive, negative, neutral.")
    assert "Awful {food}" in first["prompt"]
