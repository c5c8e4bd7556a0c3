"""How long the console's sample browser takes for a large benchmark.

Writes N samples (runner-shaped records) into S3 (moto's server on loopback, as in the
tests), then times, through the console's own code:
  - the first page: download + parse of samples.jsonl (Reader.sample_list) + page 1;
  - a later page, from the in-memory copy;
  - a filtered search (wrong answers whose text contains a word) over all samples.

    .venv/bin/python bench/console_samples.py --samples 10000 50000
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from evaluation_console import samples as sampling
from evaluation_console.results import TaskResults, make_client
from evaluation_operator.s3 import ResultsLocation
from evaluation_runner import layout

from tests.support.s3 import start_s3

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client


def records(count: int) -> bytes:
    lines = []
    for i in range(count):
        right = i % 3 == 0
        lines.append(json.dumps({
            "index": i, "input": f"Question {i}: which planet is number {i % 8 + 1}?",
            "prompt": f"Question {i}: ...", "prediction": "A" if right else "B",
            "reference": "A", "choices": ["Mercury", "Venus", "Earth", "Mars"],
            "scores": {"accuracy": float(right)}}))
    return ("\n".join(lines) + "\n").encode()


def timed(func: Callable[[], object], repeat: int = 3) -> float:
    runs = []
    for _ in range(repeat):
        start = time.perf_counter()
        func()
        runs.append(time.perf_counter() - start)
    return statistics.median(runs)


def measure(s3: S3Client, client: Any, count: int) -> str:
    location = ResultsLocation("bench", f"runs/ns/task/{count}/")
    body = records(count)
    s3.put_object(Bucket="bench", Key=location.prefix + layout.samples_key("b"),
                  Body=body)
    results = TaskResults(client, location, "bench")
    parsed: list[sampling.Sample] = []

    def first_page() -> None:
        parsed[:] = list(sampling.parse_lines(results.lines(layout.samples_key("b")),
                                              "accuracy"))
        sampling.page(parsed, offset=0, limit=25)

    first = timed(first_page)
    later = timed(lambda: sampling.page(parsed, offset=count // 2, limit=25), 5)
    search = timed(lambda: sampling.page(parsed, sampling.Verdict.WRONG, "number 7",
                                         offset=0, limit=25), 5)
    return (f"{count:>8} {len(body) / 2**20:>9.1f} {first:>13.2f} {later * 1000:>13.1f} "
            f"{search * 1000:>10.1f}")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--samples", type=int, nargs="+", default=[10_000, 50_000])
    args = parser.parse_args()
    endpoint = start_s3()
    try:
        s3 = endpoint.client()
        s3.create_bucket(Bucket="bench")
        client = make_client(endpoint.endpoint_url, endpoint.region,
                             {"AWS_ACCESS_KEY_ID": endpoint.access_key,
                              "AWS_SECRET_ACCESS_KEY": endpoint.secret_key})
        print(f"{'samples':>8} {'size MiB':>9} {'first page s':>13} {'next page ms':>13} "
              f"{'search ms':>10}")
        for count in args.samples:
            print(measure(s3, client, count))
    finally:
        endpoint.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
