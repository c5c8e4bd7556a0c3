"""A fast OpenAI-compatible endpoint for throughput measurements.

It answers at once (or after `--latency-ms`, standing in for model time) with a deterministic
text, so the figures measure the client side: request building, HTTP, concurrency, parsing.
Speaks HTTP/1.1 keep-alive, the chat and completions APIs (echo + logprobs included) and
vLLM's /tokenize, /detokenize and /tokenizer_info (one token per character), which
lm-evaluation-harness's `local-completions` uses to find context lengths.

Run: python bench/fast_endpoint.py --port 0 --latency-ms 0   (prints the URL it serves)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import socket
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

ANSWER = "The house is small."


def _completion_logprobs(tokens: list[int]) -> dict[str, Any]:
    text = [chr(t) for t in tokens] + [" "]
    values: list[float | None] = [None] + [-0.25] * len(tokens)
    return {"tokens": text, "token_logprobs": values,
            "top_logprobs": [None] + [{tok: -0.25} for tok in text[1:]],
            "text_offset": list(range(len(text)))}


def _as_tokens(prompt: Any) -> list[int]:
    if isinstance(prompt, list):
        return [int(t) for t in prompt]
    return [ord(c) for c in str(prompt)]


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    latency = 0.0

    def setup(self) -> None:
        super().setup()
        # Headers and body leave in two writes; without TCP_NODELAY, Nagle's algorithm and
        # the client's delayed ACK stall every keep-alive response by ~40 ms. Real servers
        # (uvicorn under vLLM) set it too.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, *args: Any) -> None:
        pass

    def _send(self, body: dict[str, Any], status: int = 200) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        if self.path.endswith("/tokenizer_info"):
            self._send({"eos_token": "\x03", "bos_token": None, "pad_token": None})
        else:
            self._send({"error": {"message": "no such route"}}, 404)

    def do_POST(self) -> None:
        payload = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
        if self.path.endswith("/tokenize"):
            self._send({"tokens": [ord(c) for c in payload["prompt"]]})
            return
        if self.path.endswith("/detokenize"):
            self._send({"prompt": "".join(chr(t) for t in payload["tokens"])})
            return
        if self.latency:
            time.sleep(self.latency)
        if self.path.endswith("/chat/completions"):
            self._send({"object": "chat.completion", "choices": [{
                "index": 0, "finish_reason": "stop",
                "message": {"role": "assistant", "content": ANSWER}}]})
        elif self.path.endswith("/completions"):
            prompt = payload["prompt"]
            # lm-eval sends a batch (a list of prompts, each a list of token ids).
            prompts = prompt if isinstance(prompt, list) and prompt and isinstance(
                prompt[0], list | str) else [prompt]
            choices = []
            for index, one in enumerate(prompts):
                choice: dict[str, Any] = {"index": index, "finish_reason": "stop",
                                          "text": ANSWER}
                if payload.get("echo"):
                    choice["logprobs"] = _completion_logprobs(_as_tokens(one))
                choices.append(choice)
            self._send({"object": "text_completion", "choices": choices})
        else:
            self._send({"error": {"message": "no such route"}}, 404)


class Server(ThreadingHTTPServer):
    daemon_threads = True
    # The default listen backlog (5) overflows at 64 concurrent clients that open a
    # connection per request; a dropped SYN then costs a 1 s retransmit and skews the figures.
    request_queue_size = 1024


def serve(port: int, latency_ms: float) -> ThreadingHTTPServer:
    handler = type("BenchHandler", (Handler,), {"latency": latency_ms / 1000.0})
    return Server(("127.0.0.1", port), handler)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--latency-ms", type=float, default=0.0)
    args = parser.parse_args()
    server = serve(args.port, args.latency_ms)
    print(f"http://127.0.0.1:{server.server_address[1]}/v1", flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        server.serve_forever()
    sys.exit(0)


if __name__ == "__main__":
    main()
