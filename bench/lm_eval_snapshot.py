"""What one save of lm-eval's request-cache snapshot costs (framework lm-eval resume).

Fills lm-eval's own cache (CachingLM's SqliteDict, through the cache hook as its API models do)
with N answers of a given length, then times `lm_eval_cache.consistent_copy` (SQLite's online
backup into memory, what the runner uploads every progress interval) and prints the snapshot's
size. The upload itself is one S3 PUT of that many bytes.

    .venv/bin/python bench/lm_eval_snapshot.py --answers 1000 10000 --chars 400
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

from evaluation_runner.lm_eval_cache import consistent_copy


class _Model:
    cache_hook: Any = None

    def set_cache_hook(self, hook: Any) -> None:
        self.cache_hook = hook


def measure(answers: int, chars: int, repeats: int) -> tuple[float, int]:
    from lm_eval.api.model import CachingLM

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "cache_rank0.db"
        model = _Model()
        cache = CachingLM(model, str(path))
        for i in range(answers):
            model.cache_hook.add_partial("generate_until", (f"question {i}?", {"until": []}),
                                         "x" * chars)
        cache.dbdict.close()
        best = float("inf")
        size = 0
        for _ in range(repeats):
            started = time.perf_counter()
            size = len(consistent_copy(path))
            best = min(best, time.perf_counter() - started)
        return best, size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--answers", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--chars", type=int, default=400, help="characters per answer")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    print(f"answers  chars  snapshot MiB  copy ms (best of {args.repeats})")
    for answers in args.answers:
        seconds, size = measure(answers, args.chars, args.repeats)
        print(f"{answers:7d}  {args.chars:5d}  {size / 2**20:12.2f}  {seconds * 1000:8.1f}")


if __name__ == "__main__":
    main()
