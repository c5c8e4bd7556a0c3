"""Model weights loaded inside the pod (Hugging Face transformers, on the GPU when present).

Optional: needs the `transformers` and `torch` packages, which the GPU image installs."""

from __future__ import annotations

import tempfile
import threading
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


class LocalModel:
    """The same interface as ModelClient, backed by transformers."""

    def __init__(self, path: Path, name: str) -> None:
        try:
            import torch
            import transformers
        except ImportError as error:
            raise ConfigurationError(
                "model.source: this runner image has no torch/transformers; use the GPU image "
                "or serve the model and set model.endpoint") from error
        self.torch = torch
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        try:
            self.tokenizer = transformers.AutoTokenizer.from_pretrained(path)
            # "auto": the dtype the checkpoint was saved in (bf16/fp16 for most LLMs), not
            # fp32, which would double the GPU memory. transformers 4.56 renamed the argument.
            major, minor = (int(p) for p in transformers.__version__.split(".")[:2])
            dtype_arg = "dtype" if (major, minor) >= (4, 56) else "torch_dtype"
            self.model = transformers.AutoModelForCausalLM.from_pretrained(
                path, **{dtype_arg: "auto"}).to(self.device).eval()
        except (OSError, ValueError) as error:
            raise ConfigurationError(f"model.source: cannot load a causal LM from {path}: "
                                     f"{error}"[:900]) from error
        self.endpoint = EndpointConfig(url=f"local://{name}", api="completions")
        # The runner calls the client from `concurrency` threads; one forward pass at a time
        # keeps GPU memory bounded and results independent of scheduling.
        self._lock = threading.Lock()

    def generate(self, prompt: str, *, max_tokens: int, temperature: float, seed: int,
                 stop: list[str] | None = None) -> str:
        inputs = self.tokenizer(prompt, return_tensors="pt").to(self.device)
        pad = self.tokenizer.pad_token_id
        with self._lock, self.torch.no_grad():
            self.torch.manual_seed(seed)
            sampling: dict[str, Any] = ({"do_sample": True, "temperature": temperature}
                                        if temperature > 0 else {"do_sample": False})
            output = self.model.generate(
                **inputs, max_new_tokens=max_tokens, **sampling,
                pad_token_id=pad if pad is not None else self.tokenizer.eos_token_id)
        text: str = self.tokenizer.decode(output[0][inputs["input_ids"].shape[1]:],
                                          skip_special_tokens=True)
        for marker in stop or []:
            text = text.split(marker, 1)[0]
        return text

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

    def loglikelihood(self, context: str, continuation: str) -> float:
        """Sum of log P(continuation token | everything before it)."""
        context_ids, continuation_ids = self._ids(context, continuation)
        full = self.torch.tensor([context_ids + continuation_ids], device=self.device)
        with self._lock, self.torch.no_grad():
            logits = self.model(full).logits[0].float().log_softmax(-1)
        start = len(context_ids)
        targets = full[0, start:]
        picked = logits[start - 1:full.shape[1] - 1].gather(1, targets.unsqueeze(1))
        return float(picked.sum())


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
