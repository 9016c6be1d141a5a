"""A fake OpenAI chat-completions API on 127.0.0.1, scripted per scenario (aider talks to it
through litellm). Each POST to /v1/chat/completions takes the next step of the script: a reply
(JSON, or SSE when the request asks to stream), an HTTP error, or a connection dropped before
any answer. Once the script is used up, every further request gets its last step again."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass(frozen=True)
class Reply:
    """An assistant message with its usage (`cache_write`/`cache_hit` in Anthropic's fields)."""

    content: str
    prompt_tokens: int = 2500
    completion_tokens: int = 89
    cache_write: int = 0
    cache_hit: int = 0


@dataclass(frozen=True)
class HttpError:
    status: int
    message: str
    type: str = "invalid_request_error"
    code: str | None = None


@dataclass(frozen=True)
class Drop:
    """Close the connection without an answer (a dropped stream, a proxy reset)."""


Step = Reply | HttpError | Drop


@dataclass
class FakeChat:
    steps: list[Step]
    requests: list[dict[str, Any]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    port: int = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def next_step(self, body: dict[str, Any]) -> Step:
        with self.lock:
            self.requests.append(body)
            return self.steps[min(len(self.requests), len(self.steps)) - 1]


def _usage(r: Reply) -> dict[str, Any]:
    usage: dict[str, Any] = {"prompt_tokens": r.prompt_tokens, "completion_tokens": r.completion_tokens,
                             "total_tokens": r.prompt_tokens + r.completion_tokens}
    if r.cache_write or r.cache_hit:
        usage.update(cache_creation_input_tokens=r.cache_write, cache_read_input_tokens=r.cache_hit)
    return usage


def completion(r: Reply, model: str) -> dict[str, Any]:
    return {"id": "chatcmpl-fake", "object": "chat.completion", "created": 1764460800, "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": r.content},
                         "finish_reason": "stop"}],
            "usage": _usage(r)}


def chunks(r: Reply, model: str) -> Iterator[dict[str, Any]]:
    base = {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 1764460800, "model": model}
    yield {**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]}
    for i in range(0, len(r.content), 40):
        yield {**base, "choices": [{"index": 0, "delta": {"content": r.content[i:i + 40]}, "finish_reason": None}]}
    yield {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}], "usage": _usage(r)}


def _handler(fake: FakeChat) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:  # quiet: pytest shows failures
            pass

        def do_GET(self) -> None:
            self._json(200, {"object": "list", "data": []})

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", "0"))) or b"{}")
            step = fake.next_step(body)
            model = str(body.get("model", "gpt-4o"))
            if isinstance(step, Drop):
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)
            elif isinstance(step, HttpError):
                error = {"message": step.message, "type": step.type, "code": step.code, "param": None}
                self._json(step.status, {"error": error})
            elif body.get("stream"):
                self._sse(chunks(step, model))
            else:
                self._json(200, completion(step, model))

        def _json(self, status: int, data: dict[str, Any]) -> None:
            payload = json.dumps(data).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def _sse(self, events: Iterator[dict[str, Any]]) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Connection", "close")
            self.end_headers()
            self.close_connection = True
            for event in events:
                self.wfile.write(f"data: {json.dumps(event)}\n\n".encode())
            self.wfile.write(b"data: [DONE]\n\n")

    return Handler


@contextmanager
def serve(steps: list[Step]) -> Iterator[FakeChat]:
    """The fake API, serving `steps` on a free port of 127.0.0.1 until the block ends."""
    fake = FakeChat(list(steps))
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(fake))
    server.daemon_threads = True
    fake.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, name="fake-openai-chat", daemon=True)
    thread.start()
    try:
        yield fake
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def closed_port() -> int:
    """A port of 127.0.0.1 nobody listens on: connecting to it is refused at once."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
