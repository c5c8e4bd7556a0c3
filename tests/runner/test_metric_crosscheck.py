"""Every metric option cross-checked against its reference library on unicode, empty, tie and
multiple-reference cases: sacrebleu, rouge-score, scikit-learn and lm-evaluation-harness."""

from __future__ import annotations

import json
import math
import random
import statistics
from pathlib import Path
from typing import Any

import pytest
import sacrebleu
from evaluation_runner.metrics import (
    REGISTRY,
    Answer,
    BleuOptions,
    ExactMatchOptions,
    F1Options,
    MetricOptions,
    RougeOptions,
    acc_norm_choice,
    compute_metric,
    f1_from_counts,
    rouge_scorer_for,
)
from rouge_score import rouge_scorer
from sklearn.metrics import f1_score

from tests.support.requirements import require_module

NO_BOOTSTRAP = MetricOptions(bootstrap_iterations=0)

Case = tuple[list[str], list[tuple[str, ...]]]
CHINESE: Case = (["东京是日本的首都。", "我喜欢吃苹果。", ""],
           [("东京是日本的首都。",), ("我爱吃苹果。",), ("空的",)])
MULTI: Case = (["the cat sat on the mat", "a fast brown fox", "", "hello world"],
         [("the cat is on the mat", "there is a cat on the mat"),
          ("the quick brown fox",), ("nothing", "empty"), ("hello world", "hi world", "hey")])
LATIN: Case = (["Der Bär schläft.", "naïve café", "same", ""],
         [("Der Bär schläft tief.",), ("naive cafe",), ("same",), ("",)])
CASES: dict[str, Case] = {"chinese": CHINESE, "multi-reference": MULTI, "unicode-latin": LATIN}


def answers(case: tuple[list[str], list[tuple[str, ...]]]) -> list[Answer]:
    return [Answer(p, r) for p, r in zip(*case, strict=True)]


def streams(refs: list[tuple[str, ...]]) -> Any:
    width = max(len(r) for r in refs)
    return [[r[i] if i < len(r) else None for r in refs] for i in range(width)]


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("tokenize", ["13a", "intl", "zh", "char", "none"])
def test_bleu_equals_sacrebleu_with_every_tokenizer(case: str, tokenize: str) -> None:
    predictions, references = CASES[case]
    options = MetricOptions(bleu=BleuOptions(tokenize), bootstrap_iterations=0)
    expected = sacrebleu.corpus_bleu(predictions, streams(references), tokenize=tokenize)
    assert compute_metric("bleu", "generation", answers(CASES[case]), options).value == \
        expected.score


def test_bleu_with_equal_reference_counts_equals_sacrebleus_plain_streams() -> None:
    predictions = ["the cat sat on the mat", "a fast brown fox"]
    first, second = ["the cat is on the mat", "the quick brown fox"], ["a cat sat", "fox"]
    ours = [Answer(p, (a, b)) for p, a, b in zip(predictions, first, second, strict=True)]
    assert compute_metric("bleu", "generation", ours, NO_BOOTSTRAP).value == \
        sacrebleu.corpus_bleu(predictions, [first, second]).score
    assert compute_metric("chrf", "generation", ours, NO_BOOTSTRAP).value == \
        sacrebleu.corpus_chrf(predictions, [first, second]).score


def test_a_chinese_answer_scores_with_the_zh_tokenizer_and_not_with_13a() -> None:
    perfect = [Answer("东京是日本的首都。", ("东京是日本的首都。",)),
               Answer("我喜欢吃苹果。", ("我爱吃苹果。",))]
    default = compute_metric("bleu", "generation", perfect, NO_BOOTSTRAP).value
    zh = compute_metric("bleu", "generation", perfect,
                        MetricOptions(bleu=BleuOptions("zh"), bootstrap_iterations=0)).value
    assert zh > 40 > default


def test_lowercase_bleu_equals_sacrebleu() -> None:
    predictions, references = ["The Cat SAT"], [["the cat sat"]]
    options = MetricOptions(bleu=BleuOptions(lowercase=True), bootstrap_iterations=0)
    assert compute_metric("bleu", "generation", [Answer("The Cat SAT", ("the cat sat",))],
                          options).value == \
        sacrebleu.corpus_bleu(predictions, references, lowercase=True).score


@pytest.mark.parametrize("case", CASES)
def test_chrf_equals_sacrebleu_with_multiple_references(case: str) -> None:
    predictions, references = CASES[case]
    assert compute_metric("chrf", "generation", answers(CASES[case]), NO_BOOTSTRAP).value == \
        sacrebleu.corpus_chrf(predictions, streams(references)).score


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("tokenizer", ["default", "unicode", "whitespace", "char"])
@pytest.mark.parametrize(("ours", "theirs"), [("rouge-1", "rouge1"), ("rouge-2", "rouge2"),
                                              ("rouge-l", "rougeL"), ("rouge-lsum", "rougeLsum")])
def test_rouge_equals_rouge_score_best_reference(case: str, tokenizer: str, ours: str,
                                                 theirs: str) -> None:
    predictions, references = CASES[case]
    options = MetricOptions(rouge=RougeOptions(tokenizer), bootstrap_iterations=0)
    # rouge-score's own scorer, given the same tokenizer object ours uses.
    tokenizer_object = rouge_scorer_for(options.rouge)._tokenizer
    scorer = rouge_scorer.RougeScorer([theirs], tokenizer=tokenizer_object)
    expected = [scorer.score_multi(list(r), p)[theirs].fmeasure
                for p, r in zip(predictions, references, strict=True)]
    value = compute_metric(ours, "generation", answers(CASES[case]), options)
    assert value.value == pytest.approx(math.fsum(expected) / len(expected), abs=1e-12)
    assert value.stderr == pytest.approx(statistics.stdev(expected) / len(expected) ** 0.5)


def test_rouge_default_tokenizer_is_rouge_scores_own() -> None:
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    options = MetricOptions(rouge=RougeOptions(use_stemmer=True), bootstrap_iterations=0)
    value = compute_metric("rouge-l", "generation", [Answer("cats running", ("cat runs",))],
                           options)
    assert value.value == scorer.score("cat runs", "cats running")["rougeL"].fmeasure


def test_non_latin_rouge_needs_the_unicode_tokenizer() -> None:
    chinese = [Answer("东京是日本的首都", ("东京是日本的首都",))]
    russian = [Answer("кошка сидит на ковре", ("кошка сидит на ковре",))]
    for case in (chinese, russian):
        assert compute_metric("rouge-1", "generation", case, NO_BOOTSTRAP).value == 0.0
        unicode = MetricOptions(rouge=RougeOptions("unicode"), bootstrap_iterations=0)
        assert compute_metric("rouge-1", "generation", case, unicode).value == 1.0


def test_rouge_lsum_splits_sentences_on_newlines() -> None:
    prediction = "the cat sat.\nthe dog ran."
    reference = "the dog ran.\nthe cat sat."
    ours = compute_metric("rouge-lsum", "generation", [Answer(prediction, (reference,))],
                          NO_BOOTSTRAP).value
    scorer = rouge_scorer.RougeScorer(["rougeLsum", "rougeL"])
    assert ours == scorer.score(reference, prediction)["rougeLsum"].fmeasure == 1.0
    assert scorer.score(reference, prediction)["rougeL"].fmeasure < 1.0


F1_CASES = [
    (["a", "b", "a", "c"], ["a", "b", "b", "c"], None),
    (["pos", "neg", "neg", "pos"], ["pos", "pos", "pos", "pos"], ["pos", "neg"]),
    (["x", "y"], ["z", "z"], ["x", "y"]),
    (["é", "ü", "é"], ["é", "é", "é"], None),
    (["", "a", ""], ["", "", "a"], None),  # the empty label
    (["a", "b"], ["b", "a"], None),  # all wrong: ties at zero
]


@pytest.mark.parametrize(("references", "predictions", "labels"), F1_CASES)
@pytest.mark.parametrize("average", ["macro", "micro", "weighted"])
def test_f1_averages_equal_scikit_learn(references: list[str], predictions: list[str],
                                        labels: list[str] | None, average: str) -> None:
    label_set = labels or sorted(set(references))
    expected = f1_score(references, predictions, labels=label_set, average=average,
                        zero_division=0)
    options = MetricOptions(f1=F1Options(average), bootstrap_iterations=0,
                            labels=tuple(labels) if labels else None)
    ours = [Answer(p, (r,)) for p, r in zip(predictions, references, strict=True)]
    assert compute_metric("f1", "classification", ours, options).value == expected


@pytest.mark.parametrize(("references", "predictions"), [
    (["spam", "ham", "spam", "ham"], ["spam", "spam", "ham", "ham"]),
    (["spam", "spam", "spam"], ["ham", "ham", "ham"]),
    (["ham", "ham"], ["ham", "ham"]),  # the positive label never appears
    (["спам", "хам", "спам"], ["спам", "спам", "спам"]),
])
def test_binary_f1_equals_scikit_learn(references: list[str], predictions: list[str]) -> None:
    positive = "спам" if "спам" in references else "spam"
    expected = f1_score(references, predictions, average="binary", pos_label=positive,
                        zero_division=0)
    options = MetricOptions(f1=F1Options("binary", positive), bootstrap_iterations=0)
    ours = [Answer(p, (r,)) for p, r in zip(predictions, references, strict=True)]
    assert compute_metric("f1", "classification", ours, options).value == expected


def test_binary_f1_survives_an_answer_outside_the_labels() -> None:
    # sklearn's average="binary" refuses three classes; the positive label's F1 is defined.
    ours = [Answer("spam", ("spam",)), Answer("no idea", ("ham",)), Answer("ham", ("spam",))]
    options = MetricOptions(f1=F1Options("binary", "spam"), bootstrap_iterations=0)
    assert compute_metric("f1", "classification", ours, options).value == f1_score(
        ["spam", "ham", "spam"], ["spam", "no idea", "ham"], labels=["spam"], average=None,
        zero_division=0)[0]


@pytest.mark.parametrize("average", ["macro", "micro", "weighted"])
def test_f1_from_counts_equals_scikit_learn_on_resamples(average: str) -> None:
    """The bootstrap's fast path computes the same F1 as scikit-learn."""
    from evaluation_runner.metrics import REGISTRY

    rng = random.Random(3)
    labels = ["a", "b", "c", "ü"]
    references = [rng.choice(labels) for _ in range(60)]
    predictions = [rng.choice([*labels, "?"]) for _ in range(60)]
    options = MetricOptions(f1=F1Options(average), labels=tuple(labels))
    ours = [Answer(p, (r,)) for p, r in zip(predictions, references, strict=True)]
    corpus_stats = REGISTRY["f1"].corpus_stats
    assert corpus_stats is not None
    stats = corpus_stats.stats(ours, "classification", options)
    for _ in range(20):
        picked = [rng.randrange(60) for _ in range(60)]
        expected = f1_score([references[i] for i in picked], [predictions[i] for i in picked],
                            labels=labels, average=average, zero_division=0)
        assert f1_from_counts(list(stats[picked].sum(axis=0)), average) == \
            pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("name", ["bleu", "chrf"])
def test_sacrebleu_statistics_sum_to_the_corpus_score(name: str) -> None:
    from evaluation_runner.metrics import REGISTRY

    for case in CASES.values():
        ours = answers(case)
        functions = REGISTRY[name].corpus_stats
        assert functions is not None
        total = functions.stats(ours, "generation", NO_BOOTSTRAP).sum(axis=0)
        assert functions.score(total, NO_BOOTSTRAP) == pytest.approx(
            compute_metric(name, "generation", ours, NO_BOOTSTRAP).value, abs=1e-9)


def test_bootstrap_is_seeded_and_close_to_the_analytic_standard_error() -> None:
    rng = random.Random(5)
    labels = ("a", "b")
    ours = [Answer(rng.choice(labels), (rng.choice(labels),)) for _ in range(400)]
    options = MetricOptions(f1=F1Options("micro"), labels=labels, bootstrap_iterations=2000,
                            seed=11)
    first = compute_metric("f1", "classification", ours, options)
    again = compute_metric("f1", "classification", ours, options)
    other = compute_metric("f1", "classification", ours,
                           MetricOptions(f1=F1Options("micro"), labels=labels,
                                         bootstrap_iterations=2000, seed=12))
    assert first.stderr == again.stderr and first.stderr != other.stderr
    # Micro F1 with every answer a label is accuracy: its standard error is known.
    p = first.value
    assert first.stderr == pytest.approx(math.sqrt(p * (1 - p) / len(ours)), rel=0.1)


def test_corpus_metrics_report_a_bootstrap_stderr_and_none_when_off() -> None:
    ours = answers(MULTI)
    with_stderr = compute_metric("bleu", "generation", ours, MetricOptions(seed=1))
    assert with_stderr.stderr is not None and with_stderr.stderr > 0
    assert compute_metric("bleu", "generation", ours, NO_BOOTSTRAP).stderr is None
    assert compute_metric("bleu", "generation", [], MetricOptions()).samples == 0


def _lm_eval_exact_match(predictions: list[str], references: list[str],
                         options: ExactMatchOptions) -> float:
    from lm_eval.api.metrics import exact_match_hf_evaluate

    result: dict[str, Any] = exact_match_hf_evaluate(
        predictions=predictions, references=references,
        regexes_to_ignore=list(options.regexes_to_ignore) or None,
        ignore_case=options.ignore_case, ignore_punctuation=options.ignore_punctuation,
        ignore_numbers=options.ignore_numbers)
    return float(result["exact_match"])


EM_PREDICTIONS = ["The Eiffel Tower!", "Paris", "42 apples", "", "Ünïcode", "answer: B"]
EM_REFERENCES = ["eiffel tower", "paris", "apples", "", "ünïcode", "B"]


@pytest.mark.parametrize("options", [
    ExactMatchOptions("none"),
    ExactMatchOptions("none", ignore_case=True),
    ExactMatchOptions("none", ignore_case=True, ignore_punctuation=True),
    ExactMatchOptions("none", ignore_numbers=True, ignore_case=True),
    ExactMatchOptions("none", regexes_to_ignore=(r"^answer:\s*",)),
], ids=["plain", "case", "case+punctuation", "numbers+case", "regex"])
def test_exact_match_none_equals_lm_evals_exact_match(options: ExactMatchOptions) -> None:
    require_module("lm_eval")
    ours = [Answer(p, (r,)) for p, r in zip(EM_PREDICTIONS, EM_REFERENCES, strict=True)]
    value = compute_metric("exact-match", "generation", ours,
                           MetricOptions(exact_match=options)).value
    assert value == pytest.approx(_lm_eval_exact_match(EM_PREDICTIONS, EM_REFERENCES, options))


def test_squad_and_lm_eval_exact_match_differ_as_documented() -> None:
    ours = [Answer(p, (r,)) for p, r in zip(EM_PREDICTIONS, EM_REFERENCES, strict=True)]
    squad = compute_metric("exact-match", "generation", ours).value
    plain = compute_metric("exact-match", "generation", ours,
                           MetricOptions(exact_match=ExactMatchOptions("none"))).value
    assert squad == pytest.approx(4 / 6) and plain == pytest.approx(1 / 6)


def test_multiple_references_take_the_best_match() -> None:
    ours = [Answer("Paris", ("Lutetia", "paris")), Answer("the cat", ("a dog", "cats"))]
    assert compute_metric("exact-match", "generation", ours).value == 0.5
    assert compute_metric("accuracy", "generation", ours).value == 0.0
    token = compute_metric("f1", "generation", ours)
    assert token.value == 0.5  # "Paris" matches; "cat" vs "cats" shares no token


def test_acc_norm_is_lm_evals_definition() -> None:
    """lm-eval: argmax of loglikelihood / len(choice) in characters; first index on ties."""
    choices = ("a", "a much longer answer")
    logprobs = (-2.0, -10.0)
    assert acc_norm_choice(choices, logprobs) == 1  # -0.5 per char beats -2.0
    assert acc_norm_choice(("ab", "cd"), (-1.0, -1.0)) == 0  # tie
    assert acc_norm_choice(("東京", "大阪府"), (-2.0, -3.0)) == 0  # characters, not bytes
    samples = [Answer("a", ("a much longer answer",), choices, logprobs),
               Answer("x", ("x",), ("x", "yy"), (-1.0, -2.5))]
    assert compute_metric("accuracy", "multiple-choice", samples).value == 0.5
    assert compute_metric("acc-norm", "multiple-choice", samples).value == 1.0


def test_acc_and_acc_norm_equal_lm_evals_own_process_results(tmp_path: Path) -> None:
    """lm-eval's ConfigurableTask scores the same log-likelihoods: unicode choices (length in
    characters, not bytes), ties, and choices of very different lengths."""
    require_module("lm_eval")
    from lm_eval.api.task import ConfigurableTask

    rng = random.Random(9)
    pool = ["a", "Paris", "東京都", "a much longer answer", "ünïcödé", "no", "yes indeed"]
    docs: list[dict[str, Any]] = []
    likelihoods: list[list[float]] = []
    for i in range(60):
        choices = rng.sample(pool, 4)
        values = [round(rng.uniform(-30, -0.5), 1) for _ in choices]
        if i % 10 == 0:
            values[1] = values[0]  # a tie
        docs.append({"prompt": f"q{i}", "choices": choices, "gold": rng.randrange(4)})
        likelihoods.append(values)
    data = tmp_path / "test.jsonl"
    data.write_text("".join(json.dumps(d, ensure_ascii=False) + "\n" for d in docs),
                    encoding="utf-8")
    task = ConfigurableTask(config={
        "task": "acc_norm_check", "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(data)}}, "test_split": "test",
        "output_type": "multiple_choice", "doc_to_text": "{{prompt}}",
        "doc_to_choice": "{{choices}}", "doc_to_target": "{{gold}}",
        "metric_list": [{"metric": "acc"}, {"metric": "acc_norm"}],
        "metadata": {"version": 1.0}})
    ours = []
    for doc, values in zip(docs, likelihoods, strict=True):
        best = max(enumerate(values), key=lambda pair: (pair[1], -pair[0]))[0]
        ours.append(Answer(doc["choices"][best], (doc["choices"][doc["gold"]],),
                           tuple(doc["choices"]), tuple(values)))
    theirs = [task.process_results(doc, [(v, False) for v in values])
              for doc, values in zip(docs, likelihoods, strict=True)]
    assert [REGISTRY["acc-norm"].sample_score(a, "multiple-choice", MetricOptions())
            for a in ours] == [t["acc_norm"] for t in theirs]
    assert [REGISTRY["accuracy"].sample_score(a, "multiple-choice", MetricOptions())
            for a in ours] == [t["acc"] for t in theirs]
    assert any(t["acc"] != t["acc_norm"] for t in theirs)  # the normalisation mattered
