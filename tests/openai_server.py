"""A small OpenAI-compatible Chat Completions server for tests: a real HTTP server (http.server) on 127.0.0.1 in a
thread, speaking the real wire format, that can be told to answer 429, 500, malformed JSON or slowly.

    with FakeChatServer(reply=lambda messages, model: "hello") as server:
        server.faults.extend(["429", "500", "malformed", "slow"])   # the next requests, in order
        client = openai.OpenAI(base_url=server.base_url, api_key="test")

`reply(messages, model)` makes the assistant text of every normal answer. `faults` is consumed one per request;
"ok" answers normally. `requests` records every request body received; `answered` counts 200 answers.
"""
from __future__ import annotations

import json
import threading
import time
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

FAULTS = ("ok", "429", "500", "503", "malformed", "empty_choices", "slow", "401")


def completion_body(text: str, model: str, prompt_tokens: int, completion_tokens: int) -> dict:
    return {"id": f"chatcmpl-{time.monotonic_ns()}", "object": "chat.completion", "created": int(time.time()),
            "model": model, "system_fingerprint": "fp_test",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text, "refusal": None},
                         "logprobs": None, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": prompt_tokens + completion_tokens}}


class FakeChatServer:
    def __init__(self, reply=lambda messages, model: "ok", slow_s: float = 2.0, delay_s: float = 0.0):
        self.reply = reply
        self.slow_s = slow_s          # how long a "slow" fault sleeps (longer than the client's timeout)
        self.delay_s = delay_s        # every normal answer waits this long (to kill a client mid-run)
        self.faults: deque[str] = deque()
        self.requests: list[dict] = []
        self.answered = 0
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._server.shutdown()
        self._server.server_close()

    def _next_fault(self) -> str:
        with self._lock:
            return self.faults.popleft() if self.faults else "ok"

    def _handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):   # keep test output quiet
                pass

            def _send(self, status: int, body: bytes, headers: dict | None = None):
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(body)))
                    for key, value in (headers or {}).items():
                        self.send_header(key, value)
                    self.end_headers()
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):
                    pass   # the client timed out and hung up: what a real server sees too

            def _error(self, status: int, message: str, kind: str, headers=None):
                body = {"error": {"message": message, "type": kind, "param": None, "code": kind}}
                self._send(status, json.dumps(body).encode(), headers)

            def do_GET(self):
                if self.path.rstrip("/") == "/v1/models":
                    self._send(200, json.dumps({"object": "list", "data": [
                        {"id": "test-model", "object": "model", "created": 0, "owned_by": "tests"}]}).encode())
                else:
                    self._error(404, f"no route {self.path}", "not_found")

            def do_POST(self):
                length = int(self.headers.get("Content-Length", 0))
                body = json.loads(self.rfile.read(length) or b"{}")
                if self.path != "/v1/chat/completions":
                    return self._error(404, f"no route {self.path}", "not_found")
                with server._lock:
                    server.requests.append(body)
                fault = server._next_fault()
                if fault == "429":
                    return self._error(429, "Rate limit reached", "rate_limit_exceeded", {"retry-after": "0"})
                if fault in ("500", "503"):
                    return self._error(int(fault), "The server had an error", "server_error")
                if fault == "401":
                    return self._error(401, "Incorrect API key provided", "invalid_api_key")
                if fault == "malformed":
                    return self._send(200, b'{"id": "chatcmpl-1", "choices": [{"message": {"content": "trunc')
                if fault == "empty_choices":
                    return self._send(200, json.dumps({"id": "x", "object": "chat.completion", "created": 0,
                                                       "model": body.get("model"), "choices": []}).encode())
                if fault == "slow":
                    time.sleep(server.slow_s)
                elif server.delay_s:
                    time.sleep(server.delay_s)
                messages, model = body.get("messages", []), body.get("model", "test-model")
                text = server.reply(messages, model)
                prompt_tokens = sum(len(str(m.get("content", "")).split()) for m in messages)
                self._send(200, json.dumps(completion_body(text, model, prompt_tokens, len(text.split()))).encode())
                with server._lock:
                    server.answered += 1

        return Handler


if __name__ == "__main__":   # a manual check: python tests/openai_server.py, then point a client at it
    with FakeChatServer(reply=lambda messages, model: "I see a dog.") as s:
        print(s.base_url, flush=True)
        threading.Event().wait()
