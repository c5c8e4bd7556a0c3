"""The names of the objects in a task's results bundle (docs/runner-contract.md, section 2).

The one list of bundle keys: the runner writes them (bundle.py, runner.py) and the kubectl
plugin and web console (evaluation_console) read them. Keys are relative to the task's
prefix `<prefix>/<namespace>/<task>/<uid>/`.
"""

from __future__ import annotations

SUMMARY_JSON = "summary.json"
SUMMARY_CSV = "summary.csv"
RESULTS_ZIP = "results.zip"
PROGRESS_JSON = "progress.json"
RUNNER_LOG = "runner.log"
BENCHMARKS_DIR = "benchmarks"
CHECKPOINTS_DIR = "checkpoints"
# Every file directly below the prefix, and the folders with one level of per-benchmark
# folders below them: what the operator's purge must cover (storage.RUNNER_FILES).
FILES = (SUMMARY_JSON, SUMMARY_CSV, RESULTS_ZIP, PROGRESS_JSON, RUNNER_LOG)
DIRECTORIES = (BENCHMARKS_DIR, CHECKPOINTS_DIR)
# A sharded run (config `sharding.count` > 1): shard i writes below `shards/<i>/` only, with
# the same layout as a whole run (progress.json, runner.log, checkpoints/<name>/...) plus
# its answers in benchmarks/<name>/predictions.jsonl and, last, shard.json (the shard is
# done). The merge reads those and writes the bundle above at the task's prefix.
SHARDS_DIR = "shards"
SHARD_JSON = "shard.json"
SHARD_FILES = (PROGRESS_JSON, RUNNER_LOG, SHARD_JSON)
SHARD_DIRECTORIES = (BENCHMARKS_DIR, CHECKPOINTS_DIR)


def metrics_key(benchmark: str) -> str:
    return f"{BENCHMARKS_DIR}/{benchmark}/metrics.json"


def samples_key(benchmark: str) -> str:
    return f"{BENCHMARKS_DIR}/{benchmark}/samples.jsonl"


def shard_prefix(index: int) -> str:
    """The folder of shard `index`, relative to the task's prefix."""
    return f"{SHARDS_DIR}/{index}/"


def predictions_key(benchmark: str) -> str:
    """Relative to a shard's folder."""
    return f"{BENCHMARKS_DIR}/{benchmark}/predictions.jsonl"
