"""Datasets: JSONL or CSV from s3://, http(s):// or a mounted path, with a checksum."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from evaluation_runner.config import BenchmarkConfig
from evaluation_runner.errors import ConfigurationError, TransientError
from evaluation_runner.storage import error_code, s3_client, split_s3_uri


@dataclass(frozen=True)
class Sample:
    index: int
    prompt: str
    reference: str
    choices: tuple[str, ...] | None = None
    more_references: tuple[str, ...] = ()  # generation: further acceptable answers

    @property
    def references(self) -> tuple[str, ...]:
        return (self.reference, *self.more_references)


@dataclass(frozen=True)
class LoadedDataset:
    uri: str
    sha256: str
    rows: int
    examples: tuple[Sample, ...]  # few-shot examples, never scored
    samples: tuple[Sample, ...]


def fetch_bytes(uri: str, field_path: str, s3: Any | None = None) -> bytes:
    if uri.startswith("s3://"):
        bucket, key = split_s3_uri(uri)
        client = s3 or s3_client(None, None)
        try:
            body: bytes = client.get_object(Bucket=bucket, Key=key)["Body"].read()
            return body
        except Exception as error:
            code = error_code(error)
            if code in ("NoSuchKey", "NoSuchBucket", "404", "AccessDenied", "403"):
                raise ConfigurationError(f"{field_path}: {uri} cannot be read: {code}") from error
            raise TransientError(f"{field_path}: reading {uri} failed: {error}",
                                 reason="DatasetUnreachable") from error
    if uri.startswith(("http://", "https://")):
        try:
            with urllib.request.urlopen(uri, timeout=60) as response:
                data: bytes = response.read()
                return data
        except urllib.error.HTTPError as error:
            if 400 <= error.code < 500:
                raise ConfigurationError(f"{field_path}: {uri} answered HTTP {error.code}"
                                         ) from error
            raise TransientError(f"{field_path}: {uri} answered HTTP {error.code}",
                                 reason="DatasetUnreachable") from error
        except (urllib.error.URLError, OSError) as error:
            raise TransientError(f"{field_path}: {uri} unreachable: {error}",
                                 reason="DatasetUnreachable") from error
    path = Path(uri)
    if not path.is_absolute():
        raise ConfigurationError(f"{field_path}: {uri!r} is not s3://, http(s):// or a path")
    try:
        return path.read_bytes()
    except OSError as error:
        raise ConfigurationError(f"{field_path}: {uri} cannot be read: {error.strerror}"
                                 ) from error


def _records(data: bytes, fmt: str, field_path: str) -> list[dict[str, Any]]:
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise ConfigurationError(f"{field_path}: not UTF-8 text ({error})") from error
    if fmt == "csv":
        return [dict(row) for row in csv.DictReader(io.StringIO(text))]
    records = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as error:
            raise ConfigurationError(
                f"{field_path}: line {number} is not valid JSON ({error.msg})") from error
        if not isinstance(value, dict):
            raise ConfigurationError(f"{field_path}: line {number} is not a JSON object")
        records.append(value)
    return records


def _choices(value: Any, field_path: str) -> tuple[str, ...]:
    if isinstance(value, str):
        try:
            value = json.loads(value)  # CSV cells hold the list as JSON
        except ValueError:
            value = [part.strip() for part in value.split("|")]
    if not isinstance(value, list) or len(value) < 2:
        raise ConfigurationError(f"{field_path}: needs a list of at least two choices")
    return tuple(str(v) for v in value)


def _reference(value: Any, choices: tuple[str, ...] | None) -> str:
    if choices is not None and isinstance(value, int) and not isinstance(value, bool):
        return choices[value] if 0 <= value < len(choices) else str(value)
    if choices is not None and isinstance(value, str) and value.strip().isdigit() \
            and value not in choices:  # CSV cells hold an index as text
        index = int(value.strip())
        return choices[index] if 0 <= index < len(choices) else value
    if choices is not None and isinstance(value, str) and len(value) == 1 and value.isalpha() \
            and value not in choices:
        index = ord(value.upper()) - ord("A")
        if 0 <= index < len(choices):
            return choices[index]
    return "" if value is None else str(value)


def _references(value: Any, where: str) -> tuple[str, ...] | None:
    """A generation sample's list of references (JSON list, or a CSV cell holding one);
    None when the value is a single reference."""
    if isinstance(value, str) and value.startswith("["):
        try:
            parsed = json.loads(value)
        except ValueError:
            return None
        if not (isinstance(parsed, list) and all(isinstance(v, str) for v in parsed)):
            return None
        value = parsed
    if not isinstance(value, list):
        return None
    if not value or any(isinstance(v, dict | list) for v in value):
        raise ConfigurationError(f"{where}: a list of references needs at least one text")
    return tuple("" if v is None else str(v) for v in value)


def load_dataset(benchmark: BenchmarkConfig, index: int, s3: Any | None = None
                 ) -> LoadedDataset:
    field_path = f"benchmarks[{index}].dataset"
    uri = benchmark.dataset.uri
    data = fetch_bytes(uri, f"{field_path}.uri", s3)
    fmt = benchmark.dataset.format or ("csv" if uri.lower().endswith(".csv") else "jsonl")
    records = _records(data, fmt, f"{field_path} ({uri})")
    prompt_col = benchmark.dataset.column("prompt")
    reference_col = benchmark.dataset.column("reference")
    choices_col = benchmark.dataset.column("choices")
    samples = []
    for row_index, record in enumerate(records):
        where = f"{field_path} ({uri}) row {row_index + 1}"
        if prompt_col not in record:
            raise ConfigurationError(f"{where}: no column {prompt_col!r} (fields.prompt); "
                                     f"columns: {', '.join(sorted(record))}")
        if reference_col not in record:
            raise ConfigurationError(f"{where}: no column {reference_col!r} (fields.reference)")
        choices = None
        if benchmark.task == "multiple-choice":
            if choices_col not in record:
                raise ConfigurationError(f"{where}: no column {choices_col!r} (fields.choices)")
            choices = _choices(record[choices_col], where)
        many = (_references(record[reference_col], f"{where}: column {reference_col!r}")
                if benchmark.task == "generation" else None)
        if many is not None:
            samples.append(Sample(index=row_index, prompt=str(record[prompt_col]),
                                  reference=many[0], more_references=many[1:]))
            continue
        if isinstance(record[reference_col], list | dict):
            raise ConfigurationError(f"{where}: column {reference_col!r} holds a list; only "
                                     "generation benchmarks take several references")
        samples.append(Sample(index=row_index, prompt=str(record[prompt_col]),
                              reference=_reference(record[reference_col], choices),
                              choices=choices))
    if len(samples) <= benchmark.few_shot:
        raise ConfigurationError(f"{field_path}: {len(samples)} rows, not enough for "
                                 f"fewShot={benchmark.few_shot} plus samples to score")
    examples = tuple(samples[:benchmark.few_shot])
    scored = samples[benchmark.few_shot:]
    if benchmark.limit is not None:
        scored = scored[:benchmark.limit]
    return LoadedDataset(uri=uri, sha256=hashlib.sha256(data).hexdigest(), rows=len(records),
                         examples=examples, samples=tuple(scored))
