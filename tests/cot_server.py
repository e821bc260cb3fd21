"""A real chat-completions server on 127.0.0.1 for the CoT-data tests (not a test module).

It answers `POST /v1/chat/completions` like an OpenAI-compatible server, with canned per-post
behaviour: each post (recognised by the first word of its text, which the tests make the post id)
has a script of actions for its successive requests — a reply text, an HTTP status (with headers,
e.g. Retry-After), a hang past the client's timeout, or a malformed body; the last action repeats.
Every request is logged (post, time, action, whether an image was sent, the prompt) so tests can
count retries. A wrong model name gets a 404 and a wrong key a 401 that echoes the key it was given
(as careless servers do), so tests can check the key is scrubbed from everything we write.
"""

from __future__ import annotations

import json
import re
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

_POST_ID = re.compile(r"Post text: (\S+)")


def ok(text: str) -> tuple:
    return ("ok", text)


def status(code: int, headers: dict | None = None, body: str = '{"error": {"message": "boom"}}'):
    return ("status", code, headers or {}, body)


def hang(seconds: float) -> tuple:
    return ("hang", seconds)


MALFORMED = ("malformed",)


def answer(rationale: str, keyphrases: list[str]) -> str:
    return f"<think>{rationale}</think><answer>{'; '.join(keyphrases)}</answer>"


@dataclass
class Logged:
    post: str
    time: float
    action: str
    image: bool
    prompt: str
    auth: str | None
    body: dict = field(repr=False, default_factory=dict)


class FakeServer:
    def __init__(self, model: str = "teacher-x", key: str | None = None, delay: float = 0.0):
        self.model, self.key, self.delay = model, key, delay
        self.scripts: dict[str, list[tuple]] = {}
        self.log: list[Logged] = []
        self._lock = threading.Lock()
        self._counts: dict[str, int] = {}
        self.in_flight = self.max_in_flight = 0     # concurrent requests being answered
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):   # keep test output quiet
                pass

            def do_POST(self):
                length = int(self.headers.get("content-length", 0))
                body = json.loads(self.rfile.read(length))
                with server._lock:
                    server.in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server.in_flight)
                try:
                    server._handle(self, body)
                finally:
                    with server._lock:
                        server.in_flight -= 1

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.httpd.handle_error = lambda *a: None      # a client that timed out hung up: fine
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> "FakeServer":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def requests_for(self, post: str) -> list[Logged]:
        return [r for r in self.log if r.post == post]

    # ------------------------------------------------------------ request handling

    def _handle(self, handler: BaseHTTPRequestHandler, body: dict) -> None:
        user = body["messages"][-1]["content"]
        parts = user if isinstance(user, list) else [{"type": "text", "text": user}]
        prompt = "".join(p.get("text", "") for p in parts)
        image = any(p.get("type") == "image_url" and
                    p["image_url"]["url"].startswith("data:image/jpeg;base64,") for p in parts)
        match = _POST_ID.search(prompt)
        post = match.group(1) if match else "?"
        auth = handler.headers.get("authorization")
        with self._lock:
            n = self._counts.get(post, 0)
            self._counts[post] = n + 1
            script = self.scripts.get(post, [ok(answer("default", ["x"]))])
            action = script[min(n, len(script) - 1)]
            self.log.append(Logged(post, time.monotonic(), action[0], image, prompt, auth, body))
        if self.delay:
            time.sleep(self.delay)
        if self.key is not None and auth != f"Bearer {self.key}":
            given = (auth or "").removeprefix("Bearer ")
            return self._send(handler, 401, json.dumps(
                {"error": {"message": f"Incorrect API key provided: {given}"}}))
        if body.get("model") != self.model:
            return self._send(handler, 404, json.dumps(
                {"error": {"message": f"The model `{body.get('model')}` does not exist"}}))
        kind = action[0]
        if kind == "ok":
            reply = {"id": "c1", "object": "chat.completion", "model": self.model,
                     "choices": [{"index": 0, "finish_reason": "stop",
                                  "message": {"role": "assistant", "content": action[1]}}],
                     "usage": {"prompt_tokens": len(prompt) // 4,
                               "completion_tokens": len(action[1]) // 4}}
            return self._send(handler, 200, json.dumps(reply))
        if kind == "status":
            return self._send(handler, action[1], action[3], action[2])
        if kind == "hang":
            time.sleep(action[1])
            return self._send(handler, 200, "{}")
        return self._send(handler, 200, '{"choices": [{"message": ')   # malformed

    @staticmethod
    def _send(handler, code: int, text: str, headers: dict | None = None) -> None:
        data = text.encode()
        try:
            handler.send_response(code)
            handler.send_header("content-type", "application/json")
            handler.send_header("content-length", str(len(data)))
            for k, v in (headers or {}).items():
                handler.send_header(k, v)
            handler.end_headers()
            handler.wfile.write(data)
        except OSError:   # the client gave up (timeout test)
            pass
