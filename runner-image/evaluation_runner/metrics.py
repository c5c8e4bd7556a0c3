"""Metrics, computed with the field's reference libraries so the numbers agree exactly:
sacrebleu (BLEU, chrF), rouge-score (ROUGE-1/2/L), scikit-learn (macro F1).

Per-sample metrics report the mean and its standard error (sample standard deviation over
sqrt(n)). Corpus-level metrics (BLEU, chrF, macro F1) are not means of per-sample values, so
their standard error is reported as null rather than approximated.
"""

from __future__ import annotations

import math
import re
import statistics
import string
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

SCALE_100 = ("bleu", "chrf")
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = set(string.punctuation)


@dataclass(frozen=True)
class MetricValue:
    value: float
    stderr: float | None
    samples: int


def normalize_answer(text: str) -> str:
    """SQuAD's answer normalisation: lower case, no punctuation, articles or extra spaces."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match(prediction: str, reference: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(reference))


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


def _mean(values: Sequence[float]) -> MetricValue:
    n = len(values)
    if n == 0:
        return MetricValue(0.0, None, 0)
    stderr = statistics.stdev(values) / math.sqrt(n) if n > 1 else None
    return MetricValue(math.fsum(values) / n, stderr, n)


_rouge_scorer = None


def _rouge() -> object:
    global _rouge_scorer
    if _rouge_scorer is None:
        from rouge_score import rouge_scorer

        _rouge_scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"])
    return _rouge_scorer


def per_sample_scores(metric: str, task: str, prediction: str, reference: str
                      ) -> float | None:
    """The sample's own score for metrics defined per sample; None for corpus metrics."""
    if metric == "accuracy":
        return float(prediction.strip() == reference.strip())
    if metric == "exact-match":
        return exact_match(prediction, reference)
    if metric == "f1":
        return token_f1(prediction, reference) if task == "generation" else None
    if metric.startswith("rouge-"):
        key = {"rouge-1": "rouge1", "rouge-2": "rouge2", "rouge-l": "rougeL"}[metric]
        return float(_rouge().score(reference, prediction)[key].fmeasure)  # type: ignore[attr-defined]
    return None


def compute(metric: str, task: str, predictions: Sequence[str], references: Sequence[str],
            labels: Sequence[str] | None = None) -> MetricValue:
    n = len(predictions)
    if metric in ("bleu", "chrf"):
        import sacrebleu

        if metric == "bleu":
            score = sacrebleu.corpus_bleu(list(predictions), [list(references)]).score
        else:
            score = sacrebleu.corpus_chrf(list(predictions), [list(references)]).score
        return MetricValue(float(score), None, n)
    if metric == "f1" and task != "generation":
        from sklearn.metrics import f1_score

        label_set = list(labels) if labels else sorted(set(references))
        value = f1_score(list(references), list(predictions), labels=label_set,
                         average="macro", zero_division=0)
        return MetricValue(float(value), None, n)
    scores = [per_sample_scores(metric, task, p, r) for p, r in zip(predictions, references,
                                                                     strict=True)]
    return _mean([s for s in scores if s is not None])


def as_score(metric: str, value: float) -> float:
    """A metric on the 0-1 scale used for benchmark and overall scores."""
    return value / 100.0 if metric in SCALE_100 else value


def overall_score(scores: Sequence[tuple[float, float]]) -> float:
    """Weighted mean of (score, weight) pairs; weights of zero count for nothing."""
    total_weight = math.fsum(w for _, w in scores)
    if total_weight <= 0:
        return 0.0
    return math.fsum(s * w for s, w in scores) / total_weight
