"""framework: lm-eval. Each benchmark becomes a small lm-evaluation-harness task built from
our own dataset rows, run with lm-eval's OpenAI-compatible API models (`local-completions`,
`local-chat-completions`) against the same endpoint. lm-eval's per-sample answers are then
scored with our metrics, so the bundle has the same shape and the same metric definitions as
a builtin run; lm-eval's own headline figures are kept beside them in `frameworkResults`.
A benchmark interrupted part-way resumes from lm-eval's own request cache, saved to S3 as it
grows (lm_eval_cache.py).

lm_eval is imported lazily: it is an optional extra of the runner image.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from evaluation_runner import lm_eval_cache
from evaluation_runner.checkpoints import BenchmarkCheckpoint
from evaluation_runner.config import BenchmarkConfig, EndpointConfig, RunnerConfig
from evaluation_runner.datasets import LoadedDataset, Sample
from evaluation_runner.errors import ConfigurationError, TransientError
from evaluation_runner.tasks import Prediction, match_label

INSTALL_HINT = ("framework.name: lm-eval is not installed in this runner image; use the image "
                "built with the lm-eval extra (docker build --build-arg WITH_LM_EVAL=true, "
                "tag -lm-eval; or pip install 'evaluation-operator[runner,lm-eval]')")
log = logging.getLogger("evaluation_runner.lm_eval")
MC_TEMPLATE = "Question: {{prompt}}\nAnswer:"


@dataclass(frozen=True)
class FrameworkRun:
    predictions: list[Prediction]
    native: dict[str, Any]  # lm-eval's own aggregated figures for the task
    # Positions of the samples answered wholly from an earlier attempt's cache snapshot.
    cached: frozenset[int] = frozenset()


def lm_eval_version() -> str | None:
    try:
        return metadata.version("lm_eval")
    except metadata.PackageNotFoundError:
        return None


def require_lm_eval(config: RunnerConfig | None = None) -> None:
    """Fail fast, before any dataset is fetched or any benchmark runs, when the image lacks
    the extra or a benchmark cannot run under lm-eval with this endpoint."""
    _import_lm_eval()
    if config is not None:
        for index, benchmark in enumerate(config.benchmarks):
            model_spec(config, benchmark, index)


def _import_lm_eval() -> Any:
    try:
        import lm_eval
    except ImportError as error:
        raise ConfigurationError(INSTALL_HINT) from error
    return lm_eval


def task_name(benchmark: BenchmarkConfig) -> str:
    return "evalrunner_" + re.sub(r"[^A-Za-z0-9_]", "_", benchmark.name)


def _rows(samples: tuple[Sample, ...]) -> list[dict[str, Any]]:
    rows = []
    for sample in samples:
        row: dict[str, Any] = {"id": sample.index, "prompt": sample.prompt,
                               "reference": sample.reference}
        if sample.choices is not None:
            row["choices"] = list(sample.choices)
            row["gold"] = (sample.choices.index(sample.reference)
                           if sample.reference in sample.choices else 0)
        rows.append(row)
    return rows


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> str:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows),
                    encoding="utf-8")
    return str(path)


def labels_for(benchmark: BenchmarkConfig, dataset: LoadedDataset) -> list[str]:
    if benchmark.labels:
        return list(benchmark.labels)
    return sorted({s.reference for s in (*dataset.samples, *dataset.examples)})


def task_config(benchmark: BenchmarkConfig, dataset: LoadedDataset, workdir: Path,
                config: RunnerConfig) -> dict[str, Any]:
    """An lm-eval task definition (the dict form of its YAML) over our parsed rows."""
    files = {"test": _write_jsonl(workdir / "test.jsonl", _rows(dataset.samples))}
    if dataset.examples:
        files["train"] = _write_jsonl(workdir / "train.jsonl", _rows(dataset.examples))
    task: dict[str, Any] = {
        "task": task_name(benchmark),
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": files},
        "test_split": "test",
        "num_fewshot": benchmark.few_shot,
        "metadata": {"version": 1.0},
    }
    if dataset.examples:
        # The first N rows, in order, as the builtin framework does.
        task["fewshot_split"] = "train"
        task["fewshot_config"] = {"sampler": "first_n"}
    if benchmark.task == "multiple-choice":
        task.update({
            "output_type": "multiple_choice", "doc_to_text": MC_TEMPLATE,
            "doc_to_choice": "{{choices}}", "doc_to_target": "{{gold}}",
            "metric_list": [{"metric": "acc", "aggregation": "mean",
                             "higher_is_better": True}]})
    else:
        text = "{{prompt}}"
        if benchmark.task == "classification":
            # The same instruction the builtin framework appends.
            text += ("{% raw %}\nAnswer with one of: "
                     + ", ".join(labels_for(benchmark, dataset)) + ".{% endraw %}")
        task.update({
            "output_type": "generate_until", "doc_to_text": text,
            "doc_to_target": "{{reference}}", "target_delimiter": "\n",
            "fewshot_delimiter": "\n\n",
            "generation_kwargs": {"until": ["\n\n"], "max_gen_toks": config.max_tokens,
                                  "temperature": config.temperature, "do_sample": False},
            "metric_list": [{"metric": "exact_match", "aggregation": "mean",
                             "higher_is_better": True}]})
    return task


def model_spec(config: RunnerConfig, benchmark: BenchmarkConfig, index: int
               ) -> tuple[str, dict[str, Any]]:
    endpoint: EndpointConfig | None = config.endpoint
    if endpoint is None:
        raise ConfigurationError(
            "model.source: framework lm-eval runs against model.endpoint only")
    args: dict[str, Any] = {
        "model": config.model_name, "num_concurrent": config.concurrency,
        "max_retries": max(1, endpoint.max_retries + 1), "timeout": int(endpoint.timeout_seconds),
        "seed": config.seed, "max_gen_toks": config.max_tokens,
    }
    if benchmark.task == "multiple-choice":
        if endpoint.api != "completions":
            raise ConfigurationError(
                f"benchmarks[{index}].task: multiple-choice with framework lm-eval scores "
                "choices by log-likelihood, which needs model.endpoint.api: completions")
        # Context lengths come from the server's own tokenizer (vLLM's /tokenize).
        args.update(base_url=f"{endpoint.url}/completions", tokenizer_backend="remote")
        return "local-completions", args
    args["tokenizer_backend"] = "none"
    if endpoint.api == "completions":
        args["base_url"] = f"{endpoint.url}/completions"
        return "local-completions", args
    args["base_url"] = f"{endpoint.url}/chat/completions"
    return "local-chat-completions", args


def _prompt_text(arguments: Any) -> str:
    """The context lm-eval sent for a sample's first request, as text: a plain prompt, or the
    chat messages' contents when lm-eval applied a chat template (a JSON message list)."""
    first: Any = arguments
    for _ in range(4):  # {"gen_args_0": {"arg_0": ...}} / [(context, kwargs)] / JsonChatStr
        if isinstance(first, dict) and first:
            first = first.get("arg_0", next(iter(first.values())))
        elif isinstance(getattr(first, "prompt", None), str):
            first = first.prompt
        elif isinstance(first, list | tuple) and first:
            first = first[0]
        else:
            break
    if not isinstance(first, str):
        return ""
    try:
        messages = json.loads(first)
    except ValueError:
        return first
    if isinstance(messages, list) and all(isinstance(m, dict) for m in messages):
        return "\n\n".join(str(m.get("content", "")) for m in messages)
    return first


def _prediction(benchmark: BenchmarkConfig, sample: Sample, record: dict[str, Any],
                labels: list[str]) -> Prediction:
    prompt = _prompt_text(record.get("arguments"))
    responses = record.get("filtered_resps") or record.get("resps") or []
    if benchmark.task == "multiple-choice":
        assert sample.choices is not None
        values = []
        for response in responses:
            while isinstance(response, list | tuple) and response and \
                    isinstance(response[0], list | tuple):
                response = response[0]
            values.append(float(response[0]) if isinstance(response, list | tuple)
                          else float(response))
        if len(values) != len(sample.choices):
            raise TransientError(f"lm-eval returned {len(values)} log-likelihoods for "
                                 f"{len(sample.choices)} choices", reason="RunnerError")
        best = max(range(len(values)), key=lambda i: (values[i], -i))
        return Prediction(sample, prompt, sample.choices[best], tuple(values))
    text = responses[0] if responses else ""
    while isinstance(text, list | tuple):
        text = text[0] if text else ""
    prediction = str(text).strip()
    if benchmark.task == "classification":
        prediction = match_label(prediction, labels)
    return Prediction(sample, prompt, prediction)


def _chain(error: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    current: BaseException | None = error
    while current is not None and current not in seen:
        seen.append(current)
        current = current.__cause__ or current.__context__
    return seen


def _http_status(error: BaseException) -> int | None:
    for item in _chain(error):
        status = getattr(item, "status", None)
        if status is None:
            status = getattr(getattr(item, "response", None), "status_code", None)
        if isinstance(status, int) and 100 <= status < 600:
            return status
    return None


def _unreachable(error: BaseException) -> bool:
    """Connection failures, timeouts and retried-out 429/5xx: worth another attempt."""
    status = _http_status(error)
    if status is not None:
        return status == 429 or status >= 500
    for item in _chain(error):
        if isinstance(item, OSError | TimeoutError):
            return True
        if any(name in type(item).__name__ for name in ("Connect", "Timeout", "ServerDisconnected",
                                                        "ClientOSError")):
            return True
    text = str(error).lower()
    return any(w in text for w in ("cannot connect", "connection", "refused", "timed out"))


def _count_sent(lm: Any, sent: set[int]) -> None:
    """Record which samples' requests reach the model: lm-eval's CachingLM passes the model
    only the requests its cache has no answer for, so the others were resumed."""
    for name in ("loglikelihood", "loglikelihood_rolling", "generate_until"):
        method = getattr(lm, name)

        def counted(requests: list[Any], *args: Any, _method: Any = method,
                    **kwargs: Any) -> Any:
            sent.update(int(request.doc_id) for request in requests)
            return _method(requests, *args, **kwargs)

        setattr(lm, name, counted)  # an instance attribute: CachingLM looks it up by name


def run_benchmark(config: RunnerConfig, benchmark: BenchmarkConfig, index: int,
                  dataset: LoadedDataset, api_key: str | None,
                  checkpoint: BenchmarkCheckpoint | None = None) -> FrameworkRun:
    """`checkpoint`: resume from, and keep saving, this benchmark's lm-eval cache snapshot."""
    lm_eval = _import_lm_eval()
    model, model_args = model_spec(config, benchmark, index)
    if api_key:
        os.environ["OPENAI_API_KEY"] = api_key  # where lm-eval's API models read it
    # The Job's HOME is /tmp; keep the datasets cache there, never reach the Hub.
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sent: set[int] = set()
    with tempfile.TemporaryDirectory(prefix="lm-eval-") as tmp:
        task = task_config(benchmark, dataset, Path(tmp), config)
        snapshot: lm_eval_cache.CacheSnapshot | None = None
        use_cache: str | None = None
        if checkpoint is not None:
            use_cache = str(Path(tmp) / "cache")
            # lm-eval opens <use_cache>_rank<rank>.db; an API model is rank 0.
            snapshot = lm_eval_cache.CacheSnapshot(
                checkpoint.store.writer, lm_eval_cache.snapshot_key(checkpoint,
                                                                    lm_eval_version()),
                Path(f"{use_cache}_rank{int(os.environ.get('LOCAL_RANK', '0'))}.db"))
            restored = snapshot.restore()
            if restored:
                log.info("benchmark %s: %d lm-eval answers from an earlier attempt's cache",
                         benchmark.name, restored)
        try:
            # Built here, not by simple_evaluate, to count what reaches the model.
            from lm_eval.api.registry import get_model

            lm = get_model(model).create_from_arg_obj(
                model_args, {"batch_size": None, "max_batch_size": None, "device": None})
            _count_sent(lm, sent)
            with _saving(checkpoint, snapshot, lm):
                output = lm_eval.simple_evaluate(
                    model=lm, tasks=[task], log_samples=True, use_cache=use_cache,
                    apply_chat_template=model == "local-chat-completions",
                    random_seed=config.seed, numpy_random_seed=config.seed,
                    torch_random_seed=config.seed, fewshot_random_seed=config.seed,
                    bootstrap_iters=0)
        except ConfigurationError:
            raise
        except Exception as error:
            status = _http_status(error)
            if status in (400, 401, 403, 404, 422):
                raise ConfigurationError(
                    f"model.endpoint: {config.endpoint.url if config.endpoint else ''} "
                    f"rejected lm-eval's requests with HTTP {status} (check the URL, "
                    "model name and API key)") from error
            if _unreachable(error):
                url = config.endpoint.url if config.endpoint else ""
                raise TransientError(f"model endpoint {url} failed under lm-eval: {error}"[:900],
                                     reason="ModelUnreachable") from error
            raise
    if not output:
        raise TransientError("lm-eval returned no results", reason="RunnerError")
    name = task["task"]
    records = sorted(output.get("samples", {}).get(name, []), key=lambda r: int(r["doc_id"]))
    if len(records) != len(dataset.samples):
        raise TransientError(f"lm-eval scored {len(records)} of {len(dataset.samples)} "
                             f"samples of {benchmark.name}", reason="RunnerError")
    labels = labels_for(benchmark, dataset)
    predictions = [_prediction(benchmark, sample, record, labels)
                   for sample, record in zip(dataset.samples, records, strict=True)]
    native = {key: value for key, value in output.get("results", {}).get(name, {}).items()
              if isinstance(value, int | float) and not isinstance(value, bool)}
    cached = frozenset(range(len(records))) - sent if checkpoint is not None else frozenset()
    return FrameworkRun(predictions, native, cached)


@contextlib.contextmanager
def _saving(checkpoint: BenchmarkCheckpoint | None, snapshot: lm_eval_cache.CacheSnapshot | None,
            lm: Any) -> Iterator[None]:
    """Save the cache snapshot at every checkpoint flush and when lm-eval fails."""
    if checkpoint is None or snapshot is None:
        yield
        return

    def attach() -> None:
        # CachingLM hands the model its SqliteDict through the cache hook.
        if snapshot.dbdict is None:
            snapshot.dbdict = getattr(getattr(lm, "cache_hook", None), "dbdict", None)

    def save() -> None:
        attach()
        snapshot.save()

    try:
        with checkpoint.store.saving(save):
            yield
    except BaseException:
        try:
            save()
        except Exception as error:
            log.warning("lm-eval cache snapshot not saved: %s", error)
        raise
    finally:
        attach()
        snapshot.close()
