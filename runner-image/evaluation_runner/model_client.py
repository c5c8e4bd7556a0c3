"""A client for OpenAI-compatible servers (vLLM, TGI, KServe, Ollama...): chat and
completions, request timeouts, retries with backoff on 429, 5xx and connection errors."""

from __future__ import annotations

import email.utils
import json
import os
import random
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from evaluation_runner.config import EndpointConfig
from evaluation_runner.errors import ConfigurationError, RequestRejected, TransientError
from evaluation_runner.watchdog import NoWatchdog, Watchdog

API_KEY_FILE = Path("/etc/evaluation/secrets/model-api-key")
RETRY_STATUSES = (408, 409, 429, 500, 502, 503, 504)


def resolve_api_key(endpoint: EndpointConfig, key_file: Path = API_KEY_FILE) -> str | None:
    if endpoint.api_key_env:
        value = os.environ.get(endpoint.api_key_env)
        if not value:
            raise ConfigurationError(
                f"model.endpoint.apiKeyEnv: environment variable {endpoint.api_key_env} is empty "
                "(check spec.model.endpoint.apiKeySecretRef)")
        return value.strip()
    if key_file.is_file():
        return key_file.read_text().strip()
    return None


def parse_retry_after(header: str | None, now: float | None = None) -> float | None:
    """Retry-After as seconds: either delta-seconds or an HTTP date (RFC 9110)."""
    if not header:
        return None
    try:
        return max(0.0, float(header))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(header)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


class ModelClient:
    def __init__(self, endpoint: EndpointConfig, model: str, *, api_key: str | None = None,
                 backoff_seconds: float = 0.5, max_backoff_seconds: float = 30.0,
                 watchdog: Watchdog | NoWatchdog | None = None) -> None:
        self.endpoint = endpoint
        self.model = model
        self.api_key = api_key
        self.backoff_seconds = backoff_seconds
        self.max_backoff_seconds = max_backoff_seconds
        self.watchdog = watchdog or NoWatchdog()

    def _post(self, path: str, payload: dict[str, Any]) -> dict[str, Any]:
        url = f"{self.endpoint.url}{path}"
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        body = json.dumps(payload).encode()
        last_problem = ""
        for attempt in range(self.endpoint.max_retries + 1):
            retry_after: float | None = None
            try:
                request = urllib.request.Request(url, data=body, headers=headers, method="POST")
                with self.watchdog.request(url), urllib.request.urlopen(
                        request, timeout=self.endpoint.timeout_seconds) as response:
                    result: dict[str, Any] = json.loads(response.read())
                    return result
            except urllib.error.HTTPError as error:
                detail = error.read()[:300].decode(errors="replace")
                if error.code not in RETRY_STATUSES:
                    if error.code in (401, 403):  # every benchmark would fail the same way
                        raise ConfigurationError(f"model.endpoint: {url} rejected the API key: "
                                                 f"HTTP {error.code} {detail}") from error
                    raise RequestRejected(f"model.endpoint: {url} rejected the request: "
                                          f"HTTP {error.code} {detail}") from error
                last_problem = f"HTTP {error.code} {detail}"
                header = error.headers.get("Retry-After") if error.headers else None
                retry_after = parse_retry_after(header)
            except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as error:
                last_problem = str(getattr(error, "reason", error))
            except ValueError as error:
                raise TransientError(f"model.endpoint: {url} answered non-JSON: {error}"
                                     ) from error
            if attempt < self.endpoint.max_retries:
                delay = min(self.max_backoff_seconds, self.backoff_seconds * 2 ** attempt)
                delay = retry_after if retry_after is not None else delay * (
                    0.5 + random.random() / 2)  # jitter
                time.sleep(min(delay, self.max_backoff_seconds))
        raise TransientError(
            f"model endpoint {url} failed after {self.endpoint.max_retries + 1} attempts: "
            f"{last_problem}", reason="ModelUnreachable")

    def generate(self, prompt: str, *, max_tokens: int, temperature: float, seed: int,
                 stop: list[str] | None = None) -> str:
        if self.endpoint.api == "chat":
            payload: dict[str, Any] = {
                "model": self.model, "messages": [{"role": "user", "content": prompt}],
                "max_tokens": max_tokens, "temperature": temperature, "seed": seed}
            if stop:
                payload["stop"] = stop
            response = self._post("/chat/completions", payload)
            try:
                return str(response["choices"][0]["message"]["content"] or "")
            except (KeyError, IndexError, TypeError) as error:
                raise TransientError(f"model endpoint: unexpected chat response {response!r:.200}"
                                     ) from error
        payload = {"model": self.model, "prompt": prompt, "max_tokens": max_tokens,
                   "temperature": temperature, "seed": seed}
        if stop:
            payload["stop"] = stop
        response = self._post("/completions", payload)
        try:
            return str(response["choices"][0]["text"] or "")
        except (KeyError, IndexError, TypeError) as error:
            raise TransientError(f"model endpoint: unexpected completion {response!r:.200}"
                                 ) from error

    def loglikelihood(self, context: str, continuation: str) -> float:
        """Sum of the log-probabilities of `continuation`'s tokens after `context`, from
        the completions API with echo (vLLM and others return prompt logprobs this way)."""
        full = context + continuation
        response = self._post("/completions", {
            "model": self.model, "prompt": full, "max_tokens": 1, "temperature": 0.0,
            "echo": True, "logprobs": 1})
        try:
            logprobs = response["choices"][0]["logprobs"]
            offsets, values = logprobs["text_offset"], logprobs["token_logprobs"]
        except (KeyError, IndexError, TypeError) as error:
            raise RequestRejected(
                "model.endpoint: the completions API returned no prompt logprobs (echo); "
                "multiple-choice log-likelihood needs a server that supports them, or use "
                "api: chat") from error
        total = 0.0
        for offset, value in zip(offsets, values, strict=False):
            if len(context) <= offset < len(full) and value is not None:
                total += float(value)
        return total
