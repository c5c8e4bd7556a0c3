"""Turning samples into prompts, calling the model concurrently, and reading its answers."""

from __future__ import annotations

import re
import string
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from evaluation_runner.config import BenchmarkConfig
from evaluation_runner.datasets import Sample
from evaluation_runner.model_client import ModelClient

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


def predict_one(client: ModelClient, benchmark: BenchmarkConfig, sample: Sample,
                examples: Sequence[Sample], generation: Generation,
                labels: Sequence[str]) -> Prediction:
    if benchmark.task == "multiple-choice":
        assert sample.choices is not None
        shots = few_shot_block(examples, multiple_choice=True)
        if client.endpoint.api == "completions":
            context = f"{shots}Question: {sample.prompt}\nAnswer:"
            logprobs = tuple(client.loglikelihood(context, f" {c}") for c in sample.choices)
            best = max(range(len(logprobs)), key=lambda i: (logprobs[i], -i))
            return Prediction(sample, context, sample.choices[best], logprobs)
        prompt = lettered_prompt(sample, shots)
        text = client.generate(prompt, max_tokens=min(generation.max_tokens, 16),
                               temperature=generation.temperature, seed=generation.seed)
        return Prediction(sample, prompt, extract_letter(text, sample.choices))
    shots = few_shot_block(examples, multiple_choice=False)
    prompt = shots + sample.prompt
    if benchmark.task == "classification":
        prompt += f"\nAnswer with one of: {', '.join(labels)}."
    text = client.generate(prompt, max_tokens=generation.max_tokens,
                           temperature=generation.temperature, seed=generation.seed)
    if benchmark.task == "classification":
        text = match_label(text, labels)
    return Prediction(sample, prompt, text.strip())


def predict_all(client: ModelClient, benchmark: BenchmarkConfig, samples: Sequence[Sample],
                examples: Sequence[Sample], generation: Generation, concurrency: int,
                on_done: Callable[[], None] = lambda: None) -> list[Prediction]:
    labels = list(benchmark.labels) if benchmark.labels else sorted(
        {s.reference for s in [*samples, *examples]})

    def work(sample: Sample) -> Prediction:
        result = predict_one(client, benchmark, sample, examples, generation, labels)
        on_done()
        return result

    with ThreadPoolExecutor(max_workers=max(1, concurrency)) as pool:
        # map keeps dataset order, whatever order the answers arrive in.
        return list(pool.map(work, samples))
