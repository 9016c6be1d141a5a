"""A fake OpenAI Responses API (`POST /v1/responses`, streaming SSE) on 127.0.0.1, for Codex.

Each test scripts its scenario as a list of replies, one per request, in order: a streamed
response (its output items, then `response.completed` with usage), an HTTP error, or a stream
that is cut before `response.completed` (Codex then reconnects). The server records every
request so a test can check what Codex sent (the key, the tool results)."""

from __future__ import annotations

import json
import socket
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any


@dataclass(frozen=True)
class Reply:
    """One scripted answer: `status` 200 streams `items`; another status sends `error` as its
    JSON body; `drop` closes the connection after `response.created`, mid-stream."""

    items: tuple[dict[str, Any], ...] = ()
    usage: tuple[int, int, int] = (0, 0, 0)  # input tokens, of which cached, output tokens
    status: int = 200
    error: str = ""
    drop: bool = False


def run(command: str, call_id: str, usage: tuple[int, int, int] = (1000, 0, 20)) -> Reply:
    """The model asks Codex to run `command` (its `exec_command` tool)."""
    item = {"type": "function_call", "name": "exec_command", "call_id": call_id,
            "arguments": json.dumps({"cmd": command})}
    return Reply((item,), usage)


def answer(text: str, usage: tuple[int, int, int] = (1200, 1000, 30)) -> Reply:
    """The model's final message."""
    item = {"type": "message", "role": "assistant", "id": "msg_fake",
            "content": [{"type": "output_text", "text": text}]}
    return Reply((item,), usage)


def http_error(status: int, message: str) -> Reply:
    return Reply(status=status, error=message)


DROPPED = Reply(drop=True)


@dataclass
class Request:
    path: str
    headers: dict[str, str]  # names in lower case
    body: Any


@dataclass
class FakeResponses:
    """The server; `with FakeResponses([...]) as api:` serves on `api.base_url` until the block ends.
    A request beyond the script gets HTTP 400 (not retried by Codex), so an unexpected turn fails fast."""

    script: list[Reply]
    requests: list[Request] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def __enter__(self) -> FakeResponses:
        self._thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)

    def _next(self, request: Request) -> tuple[int, Reply]:
        with self._lock:
            self.requests.append(request)
            n = len(self.requests)
            return n, (self.script[n - 1] if n <= len(self.script) else http_error(400, "fake: no reply scripted"))

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:  # keep the test output clean
                pass

            def do_GET(self) -> None:  # e.g. a model list: none here
                self._send(404, b'{"error": {"message": "not found"}}', "application/json")

            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("content-length") or 0))
                try:
                    body = json.loads(raw) if raw else None
                except ValueError:
                    body = raw.decode(errors="replace")
                n, reply = fake._next(Request(self.path, {k.lower(): v for k, v in self.headers.items()}, body))
                if reply.status != 200:
                    error = {"error": {"message": reply.error, "type": "fake_error", "code": None}}
                    self._send(reply.status, json.dumps(error).encode(), "application/json")
                elif reply.drop:
                    self._drop(f"resp_{n}")
                else:
                    self._send(200, _sse(_events(reply, f"resp_{n}")), "text/event-stream")

            def _send(self, status: int, data: bytes, content_type: str) -> None:
                self.send_response(status)
                self.send_header("content-type", content_type)
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _drop(self, rid: str) -> None:
                # Chunked, so the client cannot tell the body is complete until the connection dies.
                self.send_response(200)
                self.send_header("content-type", "text/event-stream")
                self.send_header("transfer-encoding", "chunked")
                self.end_headers()
                data = _sse([{"type": "response.created", "response": {"id": rid}}])
                self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
                self.wfile.flush()
                self.connection.shutdown(socket.SHUT_RDWR)
                self.close_connection = True

        return Handler


def _events(reply: Reply, rid: str) -> list[dict[str, Any]]:
    inp, cached, out = reply.usage
    usage = {"input_tokens": inp, "input_tokens_details": {"cached_tokens": cached}, "output_tokens": out,
             "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": inp + out}
    return [{"type": "response.created", "response": {"id": rid}},
            *({"type": "response.output_item.done", "item": item} for item in reply.items),
            {"type": "response.completed", "response": {"id": rid, "usage": usage}}]


def _sse(events: list[dict[str, Any]]) -> bytes:
    return "".join(f"event: {e['type']}\ndata: {json.dumps(e)}\n\n" for e in events).encode()


def closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on: the API is unreachable."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
