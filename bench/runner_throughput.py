"""Samples per second: the builtin runner against lm-evaluation-harness's API models.

Both run the same rows against the same fast local endpoint (bench/fast_endpoint.py, in its
own process so the server does not share the client's GIL), at the same concurrency levels:
the builtin runner's request loop (`tasks.predict_all` with `ModelClient`) and
`lm_eval.simple_evaluate` with `local-chat-completions` / `local-completions` and
`num_concurrent`. Each figure is the wall time of the whole call, lm-eval's task and dataset
set-up included, as a user of either framework would wait for it.

    .venv/bin/python bench/runner_throughput.py                  # chat, generation
    .venv/bin/python bench/runner_throughput.py --api completions --task multiple-choice
    .venv/bin/python bench/runner_throughput.py --latency-ms 20  # with simulated model time
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "runner-image"), str(ROOT)]

from evaluation_runner.config import BenchmarkConfig, DatasetConfig, EndpointConfig  # noqa: E402
from evaluation_runner.datasets import Sample  # noqa: E402
from evaluation_runner.model_client import ModelClient  # noqa: E402
from evaluation_runner.tasks import Generation, predict_all  # noqa: E402

MODEL = "bench-model"


@contextlib.contextmanager
def endpoint(latency_ms: float) -> Iterator[str]:
    process = subprocess.Popen(
        [sys.executable, str(ROOT / "bench" / "fast_endpoint.py"), "--latency-ms",
         str(latency_ms)], stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        yield process.stdout.readline().strip()
    finally:
        process.terminate()
        process.wait(timeout=10)


def make_samples(count: int, task: str) -> list[Sample]:
    if task == "multiple-choice":
        return [Sample(index=i, prompt=f"Question {i}: which word means small?",
                       reference="little", choices=("big", "little", "huge", "vast"))
                for i in range(count)]
    return [Sample(index=i, prompt=f"Translate sentence {i}: Das Haus ist klein.",
                   reference="The house is small.") for i in range(count)]


def run_builtin(url: str, api: str, task: str, samples: list[Sample], concurrency: int
                ) -> float:
    client = ModelClient(EndpointConfig(url=url, api=api, timeout_seconds=60, max_retries=3),
                         MODEL)
    benchmark = BenchmarkConfig(name="bench", dataset=DatasetConfig(uri="/dev/null"),
                                task=task, metrics=("accuracy",))
    started = time.perf_counter()
    predictions = predict_all(client, benchmark, samples, (), Generation(32, 0.0, 1234),
                              concurrency)
    elapsed = time.perf_counter() - started
    assert len(predictions) == len(samples)
    return len(samples) / elapsed


def lm_eval_task(samples: list[Sample], task: str, workdir: Path) -> dict[str, Any]:
    data = workdir / "test.jsonl"
    with data.open("w") as out:
        for s in samples:
            row: dict[str, Any] = {"prompt": s.prompt, "reference": s.reference}
            if s.choices is not None:
                row |= {"choices": list(s.choices), "gold": s.choices.index(s.reference)}
            out.write(json.dumps(row) + "\n")
    config: dict[str, Any] = {
        "task": "bench_throughput", "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(data)}}, "test_split": "test",
        "metadata": {"version": 1.0},
    }
    if task == "multiple-choice":
        return config | {"output_type": "multiple_choice",
                         "doc_to_text": "Question: {{prompt}}\nAnswer:",
                         "doc_to_choice": "{{choices}}", "doc_to_target": "{{gold}}",
                         "metric_list": [{"metric": "acc"}]}
    return config | {"output_type": "generate_until", "doc_to_text": "{{prompt}}",
                     "doc_to_target": "{{reference}}",
                     "generation_kwargs": {"until": ["\n\n"], "max_gen_toks": 32,
                                           "temperature": 0.0, "do_sample": False},
                     "metric_list": [{"metric": "exact_match"}]}


def run_lm_eval(url: str, api: str, task: str, samples: list[Sample], concurrency: int
                ) -> float:
    import lm_eval
    from lm_eval.tasks import TaskManager

    chat = api == "chat"
    model_args: dict[str, Any] = {
        "model": MODEL, "base_url": f"{url}/chat/completions" if chat else f"{url}/completions",
        "num_concurrent": concurrency, "max_retries": 3, "timeout": 60,
        "tokenizer_backend": "remote" if task == "multiple-choice" else "none"}
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        output = lm_eval.simple_evaluate(
            model="local-chat-completions" if chat else "local-completions",
            model_args=model_args, tasks=[lm_eval_task(samples, task, Path(tmp))],
            task_manager=TaskManager(include_defaults=False), apply_chat_template=chat,
            log_samples=True, bootstrap_iters=0, random_seed=1234, numpy_random_seed=1234,
            torch_random_seed=1234, fewshot_random_seed=1234)
        elapsed = time.perf_counter() - started
    assert output is not None and len(output["samples"]["bench_throughput"]) == len(samples)
    return len(samples) / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 64])
    parser.add_argument("--api", choices=["chat", "completions"], default="chat")
    parser.add_argument("--task", choices=["generation", "multiple-choice"],
                        default="generation")
    parser.add_argument("--latency-ms", type=float, default=0.0,
                        help="simulated model time per request at the endpoint")
    args = parser.parse_args()
    if args.task == "multiple-choice" and args.api == "chat":
        parser.error("multiple-choice log-likelihood needs --api completions in lm-eval")
    # lm-eval logs every request batch and draws progress bars; keep the output readable.
    logging.disable(logging.WARNING)
    os.environ.setdefault("TQDM_DISABLE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    samples = make_samples(args.samples, args.task)
    print(f"{args.samples} samples, api={args.api}, task={args.task}, "
          f"endpoint latency {args.latency_ms:g} ms, {os.cpu_count()} CPUs")
    print(f"{'concurrency':>11}  {'builtin/s':>10}  {'lm-eval/s':>10}  {'ratio':>6}")
    with endpoint(args.latency_ms) as url:
        run_builtin(url, args.api, args.task, samples[:20], 4)  # warm-up
        for concurrency in args.concurrency:
            builtin = run_builtin(url, args.api, args.task, samples, concurrency)
            harness = run_lm_eval(url, args.api, args.task, samples, concurrency)
            print(f"{concurrency:>11}  {builtin:>10.1f}  {harness:>10.1f}  "
                  f"{builtin / harness:>5.2f}x", flush=True)


if __name__ == "__main__":
    main()
