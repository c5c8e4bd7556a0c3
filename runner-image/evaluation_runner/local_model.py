"""Model weights loaded inside the pod (Hugging Face transformers, on the GPU when present).

Optional: needs the `transformers` and `torch` packages, which the GPU image installs."""

from __future__ import annotations

import tempfile
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
            from transformers import AutoModelForCausalLM, AutoTokenizer
        except ImportError as error:
            raise ConfigurationError(
                "model.source: this runner image has no torch/transformers; use the GPU image "
                "or serve the model and set model.endpoint") from error
        self.torch = torch
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModelForCausalLM.from_pretrained(path).to(self.device).eval()
        self.endpoint = EndpointConfig(url=f"local://{name}", api="completions")

    def generate(self, prompt: str, *, max_tokens: int, temperature: float, seed: int,
                 stop: list[str] | None = None) -> str:
        self.torch.manual_seed(seed)
        inputs = self.tokenizer(prompt, return_tensors="pt").to(self.device)
        with self.torch.no_grad():
            output = self.model.generate(
                **inputs, max_new_tokens=max_tokens, do_sample=temperature > 0,
                temperature=temperature if temperature > 0 else None,
                pad_token_id=self.tokenizer.eos_token_id)
        text: str = self.tokenizer.decode(output[0][inputs["input_ids"].shape[1]:],
                                          skip_special_tokens=True)
        return text

    def loglikelihood(self, context: str, continuation: str) -> float:
        context_ids = self.tokenizer(context, return_tensors="pt")["input_ids"]
        full_ids = self.tokenizer(context + continuation, return_tensors="pt")["input_ids"]
        full_ids = full_ids.to(self.device)
        with self.torch.no_grad():
            logits = self.model(full_ids).logits.log_softmax(-1)
        start = context_ids.shape[1]
        total = 0.0
        for position in range(start, full_ids.shape[1]):
            total += float(logits[0, position - 1, full_ids[0, position]])
        return total


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
