"""Reading a chat model's free-text answer as one of the options or labels."""

from __future__ import annotations

import pytest
from evaluation_runner.tasks import extract_letter, match_label

CHOICES = ("red", "blue", "green", "yellow")


@pytest.mark.parametrize(("answer", "expected"), [
    ("B", "blue"),
    ("b", "blue"),
    ("(B)", "blue"),
    ("**C**", "green"),
    ("D.", "yellow"),
    ("The answer is B.", "blue"),
    ("Answer: (c)", "green"),
    ("D) yellow", "yellow"),
    ("I think it is C", "green"),
    # The article "a" is not option A.
    ("It's a tough one, but B.", "blue"),
    ("A good question. The answer is D", "yellow"),
    ("The answer is a blue one", "blue"),
    ("A", "red"),
    # The option's own text, when no letter is given.
    ("blue", "blue"),
    ("The sky is green.", "green"),
    # Nothing, or more than one option named: no answer, scored wrong.
    ("red or blue?", ""),
    ("", ""),
    ("E", ""),
])
def test_letter_extraction(answer: str, expected: str) -> None:
    assert extract_letter(answer, CHOICES) == expected


@pytest.mark.parametrize(("answer", "expected"), [
    ("Positive.", "positive"),
    ("NEGATIVE", "negative"),
    ("I think positive", "positive"),
    ("positive or negative", "positive or negative"),  # ambiguous: kept, scored wrong
    ("no idea", "no idea"),
])
def test_label_matching(answer: str, expected: str) -> None:
    assert match_label(answer, ["positive", "negative", "neutral"]) == expected
