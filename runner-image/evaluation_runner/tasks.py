"""Turning samples into prompts, calling the model concurrently, and reading its answers."""

from __future__ import annotations

import re
import string
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Protocol

from evaluation_runner.config import BenchmarkConfig, EndpointConfig
from evaluation_runner.datasets import Sample

LETTERS = string.ascii_uppercase


@dataclass(frozen=True)
class Prediction:
    sample: Sample
    prompt: str
    prediction: str
    choice_logprobs: tuple[float, ...] | None = None


@dataclass(frozen=True)
class Generation:
    max_tokens: int
    temperature: float
    seed: int


def few_shot_block(examples: Sequence[Sample], multiple_choice: bool) -> str:
    blocks = []
    for example in examples:
        if multiple_choice:
            blocks.append(f"Question: {example.prompt}\nAnswer: {example.reference}\n\n")
        else:
            blocks.append(f"{example.prompt}\n{example.reference}\n\n")
    return "".join(blocks)


def lettered_prompt(sample: Sample, shots: str) -> str:
    assert sample.choices is not None
    options = "\n".join(f"{LETTERS[i]}. {c}" for i, c in enumerate(sample.choices))
    return (f"{shots}Question: {sample.prompt}\n{options}\n"
            "Answer with the letter of the correct option only.")


def extract_letter(text: str, choices: Sequence[str]) -> str:
    """The chosen option from a chat answer such as "B", "(b)", "The answer is B." or the
    option's own text; "" when no single option can be read from it."""
    valid = LETTERS[:len(choices)]
    if not valid:
        return ""
    answer = text.strip()

    def pick(letter: str) -> str:
        return choices[LETTERS.index(letter.upper())]

    # The whole answer is a letter: "B", "b", "(B)", "B.", "**B**".
    bare = re.fullmatch(rf"[\s*(\[]*([{valid}])[\s*)\].:]*", answer, re.IGNORECASE)
    if bare:
        return pick(bare.group(1))
    # An explicit statement: "answer is B", "Answer: (c)", "option D".
    stated = re.search(rf"\b(?:answer|option|choice)\s*(?:is|:)?\s*[(\[]?([{valid}])\b"
                       r"(?!\s+[a-z])", answer, re.IGNORECASE)
    if stated:
        return pick(stated.group(1))
    # A leading label: "B) blue", "C. Paris is ...".
    leading = re.match(rf"[(\[]?([{valid}])[).\]:]\s", answer)
    if leading:
        return pick(leading.group(1))
    # A capital letter standing alone, except "A"/"I" used as a word ("A good question").
    for found in re.finditer(rf"\b([{valid}])\b", answer):
        if found.group(1) in "AI" and re.match(r"\s+[a-z]", answer[found.end():]):
            continue
        return pick(found.group(1))
    lowered = answer.lower().rstrip(".!")
    exact = [c for c in choices if c.strip().lower() == lowered]
    if exact:
        return exact[0]
    mentioned = [c for c in choices
                 if re.search(rf"\b{re.escape(c.strip().lower())}\b", lowered)]
    return mentioned[0] if len(mentioned) == 1 else ""


def match_label(text: str, labels: Sequence[str]) -> str:
    """A free-text answer mapped onto one of the labels, if exactly one fits."""
    answer = text.strip().strip(".").strip().lower()
    for label in labels:
        if answer == label.lower():
            return label
    found = [label for label in labels
             if re.search(rf"\b{re.escape(label.lower())}\b", answer)]
    return found[0] if len(found) == 1 else text.strip()


@dataclass(frozen=True)
class Request:
    """What to ask the model for one sample: a generation, or (choices set) the
    log-likelihood of each " <choice>" after the prompt."""

    prompt: str
    max_tokens: int
    choices: tuple[str, ...] | None = None


def build_request(api: str, benchmark: BenchmarkConfig, sample: Sample,
                  examples: Sequence[Sample], generation: Generation,
                  labels: Sequence[str]) -> Request:
    if benchmark.task == "multiple-choice":
        assert sample.choices is not None
        shots = few_shot_block(examples, multiple_choice=True)
        if api == "completions":
            return Request(f"{shots}Question: {sample.prompt}\nAnswer:", 0, sample.choices)
        return Request(lettered_prompt(sample, shots), min(generation.max_tokens, 16))
    prompt = few_shot_block(examples, multiple_choice=False) + sample.prompt
    if benchmark.task == "classification":
        prompt += f"\nAnswer with one of: {', '.join(labels)}."
    return Request(prompt, generation.max_tokens)


def read_answer(benchmark: BenchmarkConfig, sample: Sample, request: Request,
                labels: Sequence[str], text: str = "",
                logprobs: tuple[float, ...] | None = None) -> Prediction:
    if request.choices is not None:
        assert logprobs is not None
        best = max(range(len(logprobs)), key=lambda i: (logprobs[i], -i))
        return Prediction(sample, request.prompt, request.choices[best], logprobs)
    if benchmark.task == "multiple-choice":
        assert sample.choices is not None
        return Prediction(sample, request.prompt, extract_letter(text, sample.choices))
    if benchmark.task == "classification":
        text = match_label(text, labels)
    return Prediction(sample, request.prompt, text.strip())


class Model(Protocol):
    """A client that answers one request at a time (evaluation_runner.model_client's
    ModelClient, and evaluation_runner.local_model, which also batches)."""

    @property
    def endpoint(self) -> EndpointConfig: ...

    def generate(self, prompt: str, *, max_tokens: int, temperature: float, seed: int,
                 stop: list[str] | None = None) -> str: ...

    def loglikelihood(self, context: str, continuation: str) -> float: ...


def predict_one(client: Model, benchmark: BenchmarkConfig, sample: Sample,
                examples: Sequence[Sample], generation: Generation,
                labels: Sequence[str]) -> Prediction:
    request = build_request(client.endpoint.api, benchmark, sample, examples, generation,
                            labels)
    if request.choices is not None:
        logprobs = tuple(client.loglikelihood(request.prompt, f" {c}") for c in request.choices)
        return read_answer(benchmark, sample, request, labels, logprobs=logprobs)
    text = client.generate(request.prompt, max_tokens=request.max_tokens,
                           temperature=generation.temperature, seed=generation.seed)
    return read_answer(benchmark, sample, request, labels, text=text)


class BatchedModel(Protocol):
    """A client that answers many requests at once (evaluation_runner.local_model)."""

    def loglikelihood_many(self, requests: Sequence[tuple[str, str]]) -> list[float]: ...

    def generate_many(self, prompts: Sequence[str], *, max_tokens: int, temperature: float,
                      seed: int, stop: Sequence[Sequence[str]] | None = None) -> list[str]: ...


def predict_batched(client: BatchedModel, benchmark: BenchmarkConfig,
                    samples: Sequence[Sample], examples: Sequence[Sample],
                    generation: Generation, on_done: Callable[[], None] = lambda: None,
                    cache: AnswerCache | None = None, chunk: int = 256,
                    labels: Sequence[str] | None = None) -> list[Prediction]:
    """All of a benchmark's requests through the batch interface, `chunk` samples at a time
    (so progress and checkpoints move), in dataset order. `labels`: the label set of the
    whole dataset when `samples` is only a shard of it."""
    labels = list(labels) if labels is not None else label_set(benchmark, samples, examples)
    found: list[Prediction | None] = [cache.get(s) if cache is not None else None
                                      for s in samples]
    for prediction in found:
        if prediction is not None:
            on_done()
    todo = [i for i, p in enumerate(found) if p is None]
    for start in range(0, len(todo), chunk):
        part = todo[start:start + chunk]
        requests = {i: build_request("completions", benchmark, samples[i], examples,
                                     generation, labels) for i in part}
        scored = [i for i in part if requests[i].choices is not None]
        pairs = [(requests[i].prompt, f" {c}") for i in scored
                 for c in requests[i].choices or ()]
        values = iter(client.loglikelihood_many(pairs)) if pairs else iter(())
        for i in scored:
            logprobs = tuple(next(values) for _ in requests[i].choices or ())
            found[i] = read_answer(benchmark, samples[i], requests[i], labels,
                                   logprobs=logprobs)
        generated = [i for i in part if requests[i].choices is None]
        if generated:
            texts = client.generate_many([requests[i].prompt for i in generated],
                                         max_tokens=requests[generated[0]].max_tokens,
                                         temperature=generation.temperature,
                                         seed=generation.seed)
            for i, text in zip(generated, texts, strict=True):
                found[i] = read_answer(benchmark, samples[i], requests[i], labels, text=text)
        for i in part:
            prediction = found[i]
            assert prediction is not None
            if cache is not None:
                cache.put(samples[i], prediction)
            on_done()
    return [p for p in found if p is not None]


def label_set(benchmark: BenchmarkConfig, samples: Sequence[Sample],
              examples: Sequence[Sample]) -> list[str]:
    return list(benchmark.labels) if benchmark.labels else sorted(
        {s.reference for s in [*samples, *examples]})


class AnswerCache(Protocol):
    """Answers of earlier attempts (evaluation_runner.checkpoints)."""

    def get(self, sample: Sample) -> Prediction | None: ...

    def put(self, sample: Sample, prediction: Prediction) -> None: ...


def predict_all(client: Model, benchmark: BenchmarkConfig, samples: Sequence[Sample],
                examples: Sequence[Sample], generation: Generation, concurrency: int,
                on_done: Callable[[], None] = lambda: None,
                cache: AnswerCache | None = None,
                labels: Sequence[str] | None = None) -> list[Prediction]:
    labels = list(labels) if labels is not None else label_set(benchmark, samples, examples)

    def work(sample: Sample) -> Prediction:
        result = cache.get(sample) if cache is not None else None
        if result is None:
            result = predict_one(client, benchmark, sample, examples, generation, labels)
            if cache is not None:
                cache.put(sample, result)
        on_done()
        return result

    with ThreadPoolExecutor(max_workers=max(1, concurrency)) as pool:
        # map keeps dataset order, whatever order the answers arrive in.
        return list(pool.map(work, samples))
