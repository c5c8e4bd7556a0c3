"""Model weights loaded inside the pod (Hugging Face transformers, on the GPU when present).

Optional: needs the `transformers` and `torch` packages, which the GPU image installs."""

from __future__ import annotations

import inspect
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from evaluation_runner.config import EndpointConfig, RunnerConfig
from evaluation_runner.errors import ConfigurationError
from evaluation_runner.storage import s3_client, split_s3_uri


def download_prefix(uri: str, target: Path, client: Any) -> Path:
    bucket, prefix = split_s3_uri(uri if uri.endswith("/") else uri + "/")
    count = 0
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for item in page.get("Contents", []):
            relative = item["Key"][len(prefix):]
            if not relative or ".." in relative.split("/"):
                continue
            destination = target / relative
            destination.parent.mkdir(parents=True, exist_ok=True)
            client.download_file(bucket, item["Key"], str(destination))
            count += 1
    if count == 0:
        raise ConfigurationError(f"model.source.uri: no objects under {uri}")
    return target


def is_out_of_memory(error: BaseException) -> bool:
    return "out of memory" in str(error).lower() and isinstance(error, RuntimeError | MemoryError)


class LocalModel:
    """The same interface as ModelClient, backed by transformers, plus batch methods
    (`loglikelihood_many`, `generate_many`) that the runner prefers when present.

    Log-likelihood: requests are tokenised, duplicates dropped, sorted by length (longest
    first, so a batch too big for memory fails at once) and scored in right-padded batches;
    the requests of one context (the choices of a question) share one pass over the context,
    whose key/value cache the continuations then extend. Generation: prompts sorted by
    length, left-padded batches, each row stopping at its own stop sequences. The batch size
    starts at `max_batch_size` and halves whenever the device runs out of memory."""

    def __init__(self, path: Path, name: str, *, max_batch_size: int = 64) -> None:
        try:
            import torch
            import transformers
        except ImportError as error:
            raise ConfigurationError(
                "model.source: this runner image has no torch/transformers; use the GPU image "
                "or serve the model and set model.endpoint") from error
        self.torch = torch
        self.transformers = transformers
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        try:
            self.tokenizer = transformers.AutoTokenizer.from_pretrained(path)
            # "auto": the dtype the checkpoint was saved in (bf16/fp16 for most LLMs), not
            # fp32, which would double the GPU memory. transformers 4.56 renamed the argument.
            major, minor = (int(p) for p in transformers.__version__.split(".")[:2])
            dtype_arg = "dtype" if (major, minor) >= (4, 56) else "torch_dtype"
            loaded: Any = transformers.AutoModelForCausalLM.from_pretrained(
                path, **{dtype_arg: "auto"})
            self.model = loaded.to(self.device).eval()
        except (OSError, ValueError) as error:
            raise ConfigurationError(f"model.source: cannot load a causal LM from {path}: "
                                     f"{error}"[:900]) from error
        self.endpoint = EndpointConfig(url=f"local://{name}", api="completions")
        # transformers 5.x renames forward's `past_key_values` to `cache` (the old name is
        # deprecated, to be removed in 5.40).
        parameters = inspect.signature(self.model.forward).parameters
        self._cache_argument = "cache" if "cache" in parameters else "past_key_values"
        self.max_batch_size = max(1, max_batch_size)
        self.batch_size = self.max_batch_size
        if self.tokenizer.pad_token is None and self.tokenizer.eos_token is not None:
            self.tokenizer.pad_token = self.tokenizer.eos_token  # padding needs one
        pad = self.tokenizer.pad_token_id
        self.pad_id: int = pad if pad is not None else 0
        # The runner may call from several threads; one batch at a time on the device keeps
        # memory bounded and results independent of scheduling.
        self._lock = threading.Lock()

    # -- the ModelClient interface: one request, through the batch path ----------------------

    def generate(self, prompt: str, *, max_tokens: int, temperature: float, seed: int,
                 stop: list[str] | None = None) -> str:
        return self.generate_many([prompt], max_tokens=max_tokens, temperature=temperature,
                                  seed=seed, stop=[stop or []])[0]

    def loglikelihood(self, context: str, continuation: str) -> float:
        """Sum of log P(continuation token | everything before it)."""
        return self.loglikelihood_many([(context, continuation)])[0]

    # -- batches ------------------------------------------------------------------------------

    def _ids(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        # Encoded apart, so a merge across the boundary cannot move tokens between them.
        context_ids: list[int] = self.tokenizer(context)["input_ids"]
        continuation_ids: list[int] = self.tokenizer(
            continuation, add_special_tokens=False)["input_ids"]
        if not context_ids:
            start = self.tokenizer.bos_token_id
            if start is None:
                start = self.tokenizer.eos_token_id
            context_ids = [start]
        return context_ids, continuation_ids

    def _in_batches(self, items: list[Any], run: Any) -> list[Any]:
        """`run` over consecutive slices of `items`, halving the batch size on OOM."""
        results: list[Any] = []
        position = 0
        while position < len(items):
            chunk = items[position:position + self.batch_size]
            try:
                with self._lock, self.torch.no_grad():
                    results.extend(run(chunk))
            except Exception as error:
                if not is_out_of_memory(error) or self.batch_size == 1:
                    raise
                self.batch_size = max(1, self.batch_size // 2)
                if self.device == "cuda":
                    self.torch.cuda.empty_cache()
                continue
            position += len(chunk)
        return results

    def loglikelihood_many(self, requests: Sequence[tuple[str, str]]) -> list[float]:
        """Log-likelihoods of many (context, continuation) pairs, in the order given."""
        encoded = [self._ids(c, x) for c, x in requests]
        groups: dict[tuple[int, ...], list[tuple[int, ...]]] = {}
        for context_ids, continuation_ids in encoded:
            continuations = groups.setdefault(tuple(context_ids), [])
            if tuple(continuation_ids) not in continuations:
                continuations.append(tuple(continuation_ids))
        # Longest first: the batch most likely to exhaust memory runs (and shrinks) first.
        ordered = sorted(groups.items(), key=lambda g: -(len(g[0]) + max(map(len, g[1]))))
        scored = self._in_batches(ordered, self._score_groups)
        values: dict[tuple[tuple[int, ...], tuple[int, ...]], float] = {}
        for (context, continuations), group_values in zip(ordered, scored, strict=True):
            for continuation, value in zip(continuations, group_values, strict=True):
                values[(context, continuation)] = value
        return [values[(tuple(c), tuple(x))] for c, x in encoded]

    def _score_groups(self, groups: list[tuple[tuple[int, ...], list[tuple[int, ...]]]]
                      ) -> list[list[float]]:
        """One batch: each context once (with its key/value cache), then every continuation
        of it on top of that cache. Right padding keeps positions as in the unbatched pass."""
        torch = self.torch
        contexts = [list(context) for context, _ in groups]
        width = max(len(c) for c in contexts)
        ids = torch.full((len(contexts), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(contexts), width), dtype=torch.long)
        for row, context in enumerate(contexts):
            ids[row, :len(context)] = torch.tensor(context)
            mask[row, :len(context)] = 1
        if all(len(continuations) == 1 for _, continuations in groups):
            return self._score_rows(groups)
        if all(len(c) <= 1 for _, continuations in groups for c in continuations):
            # Single-token choices: the context's last logits are all that is needed.
            logits = self.model(input_ids=ids.to(self.device),
                                attention_mask=mask.to(self.device)).logits
            return [[self._first_token(logits, row, len(context), continuation)
                     for continuation in continuations]
                    for row, (context, continuations) in enumerate(groups)]
        return self._score_with_cache(groups, ids, mask)

    def _score_rows(self, groups: list[tuple[tuple[int, ...], list[tuple[int, ...]]]]
                    ) -> list[list[float]]:
        """One continuation per context: context and continuation in one row, one pass."""
        torch = self.torch
        rows = [(list(context), list(continuations[0])) for context, continuations in groups]
        width = max(len(c) + len(x) for c, x in rows)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for row, (context, continuation) in enumerate(rows):
            ids[row, :len(context) + len(continuation)] = torch.tensor(context + continuation)
            mask[row, :len(context) + len(continuation)] = 1
        logits = self.model(input_ids=ids.to(self.device),
                            attention_mask=mask.to(self.device)).logits
        values = []
        for row, (context, continuation) in enumerate(rows):
            if not continuation:
                values.append([0.0])
                continue
            start = len(context)
            picked = logits[row, start - 1:start + len(continuation) - 1].float().log_softmax(
                -1).gather(1, torch.tensor(continuation, device=self.device).unsqueeze(1))
            values.append([float(picked.sum())])
        return values

    def _first_token(self, logits: Any, row: int, length: int, continuation: Sequence[int]
                     ) -> float:
        if not continuation:
            return 0.0
        return float(logits[row, length - 1].float().log_softmax(-1)[continuation[0]])

    def _score_with_cache(self, groups: list[tuple[tuple[int, ...], list[tuple[int, ...]]]],
                          ids: Any, mask: Any) -> list[list[float]]:
        torch = self.torch
        output = self.model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device),
                            use_cache=True)
        context_logits = output.logits
        cache = getattr(output, "cache", None)
        if cache is None:
            cache = output.past_key_values
        owners: list[int] = []
        rows: list[list[int]] = []
        for group, (_, continuations) in enumerate(groups):
            for tokens in continuations:
                owners.append(group)
                rows.append(list(tokens))
        # Each continuation row extends its context's cache; the cache's padding positions
        # stay masked. Inputs are the continuation's tokens but the last (only a target).
        cont_width = max(1, max(len(r) - 1 for r in rows))
        cont_ids = torch.full((len(rows), cont_width), self.pad_id, dtype=torch.long)
        cont_mask = torch.zeros((len(rows), cont_width), dtype=torch.long)
        positions = torch.zeros((len(rows), cont_width), dtype=torch.long)
        lengths = mask.sum(-1)
        for row, (owner, continuation) in enumerate(zip(owners, rows, strict=True)):
            inputs = continuation[:-1]
            if inputs:
                cont_ids[row, :len(inputs)] = torch.tensor(inputs)
                cont_mask[row, :len(inputs)] = 1
            positions[row] = lengths[owner] + torch.arange(cont_width)
        index = torch.tensor(owners, device=self.device)
        expanded = select_cache_rows(cache, index)
        full_mask = torch.cat([mask[owners], cont_mask], dim=1).to(self.device)
        logits = self.model(input_ids=cont_ids.to(self.device), attention_mask=full_mask,
                            position_ids=positions.to(self.device), use_cache=True,
                            **{self._cache_argument: expanded}).logits
        values: list[list[float]] = [[] for _ in groups]
        for row, (owner, continuation) in enumerate(zip(owners, rows, strict=True)):
            length = int(lengths[owner])
            if not continuation:
                values[owner].append(0.0)
                continue
            total = self._first_token(context_logits, owner, length, continuation)
            if len(continuation) > 1:
                picked = logits[row, :len(continuation) - 1].float().log_softmax(-1).gather(
                    1, torch.tensor(continuation[1:], device=self.device).unsqueeze(1))
                total += float(picked.sum())
            values[owner].append(total)
        return values

    def generate_many(self, prompts: Sequence[str], *, max_tokens: int, temperature: float,
                      seed: int, stop: Sequence[Sequence[str]] | None = None) -> list[str]:
        """Greedy (temperature 0) or sampled continuations of many prompts, in order; row i
        is cut at the first of `stop[i]`."""
        stops = [list(s) for s in stop] if stop is not None else [[] for _ in prompts]
        lengths = [len(self.tokenizer(p)["input_ids"]) for p in prompts]
        order = sorted(range(len(prompts)), key=lambda i: -lengths[i])

        def run(chunk: list[int]) -> list[str]:
            return self._generate_batch([prompts[i] for i in chunk], [stops[i] for i in chunk],
                                        max_tokens, temperature, seed)

        texts = self._in_batches(order, run)
        result = [""] * len(prompts)
        for i, text in zip(order, texts, strict=True):
            result[i] = text
        return result

    def _generate_batch(self, prompts: list[str], stops: list[list[str]], max_tokens: int,
                        temperature: float, seed: int) -> list[str]:
        torch = self.torch
        side = self.tokenizer.padding_side
        self.tokenizer.padding_side = "left"
        try:
            inputs = self.tokenizer(prompts, return_tensors="pt", padding=True)
        finally:
            self.tokenizer.padding_side = side
        inputs = {k: v.to(self.device) for k, v in inputs.items()}
        start = inputs["input_ids"].shape[1]
        torch.manual_seed(seed)
        sampling: dict[str, Any] = ({"do_sample": True, "temperature": temperature}
                                    if temperature > 0 else {"do_sample": False})
        criteria = self.transformers.StoppingCriteriaList(
            [_RowStops(self.tokenizer, stops, start)]) if any(stops) else None
        output = self.model.generate(**inputs, max_new_tokens=max_tokens, **sampling,
                                     pad_token_id=self.pad_id, stopping_criteria=criteria)
        texts = []
        for row, markers in enumerate(stops):
            text = str(self.tokenizer.decode(output[row][start:], skip_special_tokens=True))
            for marker in markers:
                text = text.split(marker, 1)[0]
            texts.append(text)
        return texts


class _RowStops:
    """A stopping criterion per row: True for rows whose new text holds one of their stops
    (transformers then pads those rows while the others go on)."""

    def __init__(self, tokenizer: Any, stops: list[list[str]], start: int) -> None:
        self.tokenizer, self.stops, self.start = tokenizer, stops, start

    def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
        import torch

        done = []
        for row, markers in enumerate(self.stops):
            text = self.tokenizer.decode(input_ids[row][self.start:], skip_special_tokens=True)
            done.append(any(m in text for m in markers))
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)


def select_cache_rows(cache: Any, index: Any) -> Any:
    """The key/value cache with batch rows picked by `index` (repeats allowed): a transformers
    Cache object, or the legacy tuple of (key, value) per layer."""
    if isinstance(cache, tuple | list):
        return tuple(tuple(t.index_select(0, index) for t in layer) for layer in cache)
    import copy

    picked = copy.copy(cache)
    layers = getattr(picked, "layers", None)
    if layers is not None:  # transformers >= 4.56: a list of layer objects
        picked.layers = [copy.copy(layer) for layer in layers]
        for layer in picked.layers:
            layer.keys = layer.keys.index_select(0, index)
            layer.values = layer.values.index_select(0, index)
        return picked
    picked.key_cache = [k.index_select(0, index) for k in cache.key_cache]
    picked.value_cache = [v.index_select(0, index) for v in cache.value_cache]
    return picked


def local_client(config: RunnerConfig) -> LocalModel:
    assert config.source_uri is not None
    if config.source_uri.startswith("s3://"):
        target = Path(tempfile.mkdtemp(prefix="model-"))
        path = download_prefix(config.source_uri, target,
                               s3_client(config.output.endpoint_url, config.output.region))
    else:
        path = Path(config.source_uri)
        if not path.exists():
            raise ConfigurationError(f"model.source.uri: {path} does not exist")
    return LocalModel(path, config.model_name)
