"""Per-sample records from `samples.jsonl`: parsing, right/wrong, filtering and paging."""

from __future__ import annotations

import enum
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

# A sample counts as right when its judging metric's per-sample score reaches this. Accuracy
# and exact match score 0 or 1; for graded metrics (ROUGE, token F1) half is the line.
RIGHT_THRESHOLD = 0.5
# Metrics tried, in order, when the primary metric has no per-sample score (BLEU, chrF).
FALLBACK_JUDGES = ("exact-match", "accuracy", "f1", "rouge-l", "rouge-1", "rouge-2")


class Verdict(enum.StrEnum):
    ALL = "all"
    RIGHT = "right"
    WRONG = "wrong"


@dataclass(frozen=True)
class Sample:
    index: int
    input: str
    prediction: str
    reference: str
    choices: list[str] | None
    scores: dict[str, float]
    right: bool | None  # None: no per-sample metric to judge by


@dataclass(frozen=True)
class SamplePage:
    samples: list[Sample]
    matched: int  # samples that pass the filter
    total: int  # samples in the benchmark
    offset: int
    limit: int

    @property
    def has_next(self) -> bool:
        return self.offset + self.limit < self.matched


def judge(scores: dict[str, float], primary: str) -> bool | None:
    for metric in (primary, *FALLBACK_JUDGES):
        if metric in scores:
            return scores[metric] >= RIGHT_THRESHOLD
    return None


def _text(value: Any) -> str:
    if value is None:
        return ""
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def parse_sample(record: dict[str, Any], primary: str, position: int) -> Sample:
    raw_scores = record.get("scores") if isinstance(record.get("scores"), dict) else {}
    scores = {str(k): float(v) for k, v in (raw_scores or {}).items()
              if isinstance(v, int | float) and not isinstance(v, bool)}
    choices = record.get("choices")
    index = record.get("index")
    return Sample(
        index=index if isinstance(index, int) else position,
        input=_text(record.get("input")), prediction=_text(record.get("prediction")),
        reference=_text(record.get("reference")),
        choices=[_text(c) for c in choices] if isinstance(choices, list) else None,
        scores=scores, right=judge(scores, primary))


def parse_lines(lines: Iterable[bytes | str], primary: str) -> Iterator[Sample]:
    """Samples from JSON lines; a line that is not a JSON object is skipped."""
    position = 0
    for line in lines:
        text = line.decode("utf-8", "replace") if isinstance(line, bytes) else line
        if not text.strip():
            continue
        try:
            record = json.loads(text)
        except ValueError:
            continue
        if isinstance(record, dict):
            yield parse_sample(record, primary, position)
            position += 1


def matches(sample: Sample, verdict: Verdict, grep: str) -> bool:
    if verdict is Verdict.RIGHT and sample.right is not True:
        return False
    if verdict is Verdict.WRONG and sample.right is not False:
        return False
    if grep:
        needle = grep.casefold()
        return any(needle in text.casefold()
                   for text in (sample.input, sample.prediction, sample.reference))
    return True


def page(samples: Iterable[Sample], verdict: Verdict = Verdict.ALL, grep: str = "",
         offset: int = 0, limit: int = 50) -> SamplePage:
    """One page of the samples that pass the filter, counting all of them on the way."""
    chosen: list[Sample] = []
    matched = total = 0
    for sample in samples:
        total += 1
        if not matches(sample, verdict, grep):
            continue
        if offset <= matched < offset + limit:
            chosen.append(sample)
        matched += 1
    return SamplePage(chosen, matched, total, offset, limit)


@dataclass(frozen=True)
class SampleDiff:
    index: int
    input: str
    reference: str
    left: Sample
    right: Sample


def differences(left: Iterable[Sample], right: Iterable[Sample], limit: int = 50
                ) -> tuple[list[SampleDiff], int]:
    """Samples (joined by index) where two runs answered differently; the first `limit` and
    how many there are in all."""
    by_index = {s.index: s for s in right}
    found: list[SampleDiff] = []
    count = 0
    for a in left:
        b = by_index.get(a.index)
        if b is None or a.prediction.strip() == b.prediction.strip():
            continue
        count += 1
        if len(found) < limit:
            found.append(SampleDiff(a.index, a.input, a.reference, a, b))
    return found, count
