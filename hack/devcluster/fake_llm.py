"""A scripted OpenAI-compatible server on loopback, standing in for vLLM in runner tests
and in `make run` (the demo model the local evaluation asks).

Answers come from `answers` (prompt substring -> text); a prompt not found gets "I don't know".
`logprobs` gives each choice's log-probability for the completions API with echo.
`faults` is a list of HTTP statuses to return first (e.g. [429, 500]) before answering.
`fail_after`: once the server has received that many requests (over its life), fail every
later one with HTTP 500 (a model that goes down mid-benchmark).
`trickle_seconds`: instead of answering, send the headers and then one byte every 0.2 s for
that long (a hung server that a socket timeout never notices); bounded so tests end.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class FakeLLM:
    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        """`host`: the address to serve on (the e2e tier and `make run` bind the node bridge's
        gateway, which pods reach); `port` 0 picks a free one."""
        self.answers: dict[str, str] = {}
        self.choice_logprobs: dict[str, float] = {}
        self.faults: list[int] = []
        # Prompts containing a key are answered with its HTTP status, every time.
        self.reject: dict[str, int] = {}
        self.delay_seconds = 0.0
        self.trickle_seconds = 0.0
        self.require_key: str | None = None
        self.requests: list[dict[str, Any]] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.fail_after: int | None = None
        self._lock = threading.Lock()
        self.server = ThreadingHTTPServer((host, port), self._handler())
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host!s}:{port}/v1"

    def start(self) -> FakeLLM:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def answer_for(self, prompt: str) -> str:
        for needle, answer in self.answers.items():
            if needle in prompt:
                return answer
        return "I don't know"

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            counted = False

            def _release(self) -> None:
                # A request stops being in flight before its answer is written: once the
                # client has the answer it may send its next request at once, and that must
                # not overlap this one in the count.
                if self.counted:
                    self.counted = False
                    with fake._lock:
                        fake.in_flight -= 1

            def _send(self, status: int, body: dict[str, Any],
                      headers: dict[str, str] | None = None) -> None:
                data = json.dumps(body).encode()
                self._release()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self) -> None:
                payload = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with fake._lock:
                    fake.requests.append({"path": self.path, **payload,
                                          "auth": self.headers.get("Authorization")})
                    fault = fake.faults.pop(0) if fake.faults else None
                    if fault is None and fake.fail_after is not None and \
                            len(fake.requests) > fake.fail_after:
                        fault = 500
                    fake.in_flight += 1
                    fake.max_in_flight = max(fake.max_in_flight, fake.in_flight)
                self.counted = True
                try:
                    if fake.delay_seconds:
                        time.sleep(fake.delay_seconds)
                    if fake.require_key and self.headers.get("Authorization") != \
                            f"Bearer {fake.require_key}":
                        self._send(401, {"error": {"message": "invalid api key"}})
                        return
                    if fake.trickle_seconds:
                        self._trickle(fake.trickle_seconds)
                        return
                    prompt_text = json.dumps(payload.get("messages") or payload.get("prompt"))
                    rejected = next((code for needle, code in fake.reject.items()
                                     if needle in prompt_text), None)
                    if rejected:
                        self._send(rejected, {"error": {"message": f"scripted {rejected}"}})
                        return
                    if fault:
                        self._send(fault, {"error": {"message": f"scripted {fault}"}},
                                   {"Retry-After": "0"} if fault == 429 else None)
                        return
                    if self.path.endswith("/chat/completions"):
                        prompt = payload["messages"][-1]["content"]
                        self._send(200, {"choices": [{"index": 0, "message": {
                            "role": "assistant", "content": fake.answer_for(prompt)}}]})
                    elif self.path.endswith("/completions"):
                        self._send(200, self._completion(payload))
                    else:
                        self._send(404, {"error": {"message": "no such route"}})
                finally:
                    self._release()

            def _trickle(self, seconds: float) -> None:
                self._release()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", "1000000")
                self.end_headers()
                deadline = time.monotonic() + seconds
                try:
                    while time.monotonic() < deadline:
                        self.wfile.write(b" ")
                        self.wfile.flush()
                        time.sleep(0.2)
                except OSError:
                    pass  # the client went away

            def _completion(self, payload: dict[str, Any]) -> dict[str, Any]:
                prompt = payload["prompt"]
                if not payload.get("echo"):
                    return {"choices": [{"index": 0, "text": fake.answer_for(prompt)}]}
                # Echo: the prompt as two "tokens" (context, then the choice), with logprobs.
                split = prompt.rfind("Answer:") + len("Answer:")
                choice = prompt[split:].strip()
                value = fake.choice_logprobs.get(choice, -10.0)
                return {"choices": [{"index": 0, "text": prompt, "logprobs": {
                    "tokens": [prompt[:split], prompt[split:], "x"],
                    "text_offset": [0, split, len(prompt)],
                    "token_logprobs": [None, value, -0.1]}}]}

        return Handler
