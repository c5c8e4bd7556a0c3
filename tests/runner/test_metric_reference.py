"""Our metrics agree exactly with the reference libraries on varied inputs."""

from __future__ import annotations

import statistics

import pytest
import sacrebleu
from evaluation_runner.metrics import (
    as_score,
    compute,
    exact_match,
    overall_score,
    token_f1,
)
from rouge_score import rouge_scorer
from sklearn.metrics import f1_score

CASES = {
    "plain": (["the cat sat on the mat", "a quick brown fox"],
              ["the cat is on the mat", "the quick brown fox"]),
    "unicode": (["Der Bär schläft.", "東京は日本の首都です", "naïve café"],
                ["Der Bär schläft tief.", "東京は日本の首都", "naive cafe"]),
    "empty-predictions": (["", "something", ""], ["a reference", "something", "x"]),
    "identical": (["same text here"] * 3, ["same text here"] * 3),
}


@pytest.mark.parametrize("case", CASES)
def test_bleu_and_chrf_equal_sacrebleu(case: str) -> None:
    predictions, references = CASES[case]
    assert compute("bleu", "generation", predictions, references).value == \
        sacrebleu.corpus_bleu(predictions, [references]).score
    assert compute("chrf", "generation", predictions, references).value == \
        sacrebleu.corpus_chrf(predictions, [references]).score


@pytest.mark.parametrize("case", CASES)
def test_rouge_equals_rouge_score(case: str) -> None:
    predictions, references = CASES[case]
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"])
    for ours, theirs in (("rouge-1", "rouge1"), ("rouge-2", "rouge2"), ("rouge-l", "rougeL")):
        expected = [scorer.score(r, p)[theirs].fmeasure for p, r in
                    zip(predictions, references, strict=True)]
        value = compute(ours, "generation", predictions, references)
        assert value.value == pytest.approx(sum(expected) / len(expected), abs=1e-15)
        assert value.samples == len(predictions)
        assert value.stderr == pytest.approx(statistics.stdev(expected) / len(expected) ** 0.5)


@pytest.mark.parametrize(("references", "predictions", "labels"), [
    (["a", "b", "a", "c"], ["a", "b", "b", "c"], None),
    (["pos", "neg", "neg", "pos"], ["pos", "pos", "pos", "pos"], ["pos", "neg"]),  # a class never
    (["x", "y"], ["z", "z"], ["x", "y"]),  # predicted labels outside the set
    (["é", "ü", "é"], ["é", "é", "é"], None),
])
def test_macro_f1_equals_scikit_learn(references: list[str], predictions: list[str],
                                      labels: list[str] | None) -> None:
    expected = f1_score(references, predictions, labels=labels or sorted(set(references)),
                        average="macro", zero_division=0)
    assert compute("f1", "classification", predictions, references, labels).value == expected


def test_squad_style_exact_match_and_f1() -> None:
    assert exact_match("The Eiffel Tower!", "eiffel tower") == 1.0
    assert exact_match("", "") == 1.0 and exact_match("", "x") == 0.0
    assert token_f1("the cat sat", "a cat sat down") == pytest.approx(2 * (1 * 2 / 3) / (1 + 2 / 3))
    assert token_f1("", "") == 1.0 and token_f1("x", "") == 0.0


def test_accuracy_ties_and_standard_error() -> None:
    value = compute("accuracy", "multiple-choice", ["a", "b", "a", "b"], ["a", "a", "a", "b"])
    assert value.value == 0.75
    assert value.stderr == pytest.approx(statistics.stdev([1, 0, 1, 1]) / 2)


def test_overall_is_the_weighted_mean_of_normalised_primary_metrics() -> None:
    assert as_score("bleu", 42.0) == 0.42 and as_score("accuracy", 0.42) == 0.42
    assert overall_score([(0.5, 1), (1.0, 3)]) == pytest.approx(0.875)
    assert overall_score([(0.5, 0)]) == 0.0
