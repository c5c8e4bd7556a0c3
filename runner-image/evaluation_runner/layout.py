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


def metrics_key(benchmark: str) -> str:
    return f"{BENCHMARKS_DIR}/{benchmark}/metrics.json"


def samples_key(benchmark: str) -> str:
    return f"{BENCHMARKS_DIR}/{benchmark}/samples.jsonl"
