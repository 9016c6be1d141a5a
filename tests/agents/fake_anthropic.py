"""A fake Anthropic Messages API on 127.0.0.1 for the conformance suite: each POST /v1/messages
answers with the next step of a script (a streamed assistant message, an HTTP error, a stream
dropped midway, or no answer at all), so a real Claude Code runs a scenario with no model and no
network. Every request is recorded, so a test can assert what the CLI sent."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

MODEL = "claude-fake-1"


@dataclass(frozen=True)
class Text:
    text: str


@dataclass(frozen=True)
class ToolUse:
    name: str
    input: dict[str, Any]
    id: str = ""


Block = Text | ToolUse


@dataclass(frozen=True)
class Reply:
    """One assistant message, streamed as the API streams it: message_start (with the input
    usage and one output token), the blocks, then message_delta with the final output tokens."""

    blocks: tuple[Block, ...]
    input_tokens: int = 10
    output_tokens: int = 20
    cache_creation_input_tokens: int = 300
    cache_read_input_tokens: int = 4000


@dataclass(frozen=True)
class HttpError:
    """An API error response: a JSON body {"type": "error", "error": {...}} with `status`."""

    status: int
    kind: str
    message: str
    headers: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Drop:
    """The reply's stream is cut after `after` SSE events (the connection closes mid-message)."""

    reply: Reply
    after: int = 3


@dataclass(frozen=True)
class Hang:
    """Start the reply (message_start), then send nothing more until the server stops."""

    reply: Reply


Step = Reply | HttpError | Drop | Hang


def reply(*blocks: Block | str, **usage: int) -> Reply:
    return Reply(tuple(Text(b) if isinstance(b, str) else b for b in blocks), **usage)


@dataclass
class Server:
    script: list[Step]
    rest: Step | None = None  # the answer once the script is used up (None: a 500 that says so)
    requests: list[dict[str, Any]] = field(default_factory=list)  # every JSON body POSTed to /v1/messages
    paths: list[str] = field(default_factory=list)  # every request line's method and path
    port: int = 0
    stopping: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def next_step(self, body: dict[str, Any]) -> Step | None:
        with self.lock:
            self.requests.append(body)
            return self.script.pop(0) if self.script else self.rest


def sse_events(message_id: str, step: Reply) -> list[tuple[str, dict[str, Any]]]:
    """The SSE events of one streamed assistant message, in the API's order."""
    usage = {"input_tokens": step.input_tokens, "output_tokens": 1,
             "cache_creation_input_tokens": step.cache_creation_input_tokens,
             "cache_read_input_tokens": step.cache_read_input_tokens}
    events: list[tuple[str, dict[str, Any]]] = [("message_start", {"type": "message_start", "message": {
        "id": message_id, "type": "message", "role": "assistant", "model": MODEL, "content": [],
        "stop_reason": None, "stop_sequence": None, "usage": usage}})]
    for index, block in enumerate(step.blocks):
        events += _block_events(index, block, f"{message_id}_{index}")
    stop = "tool_use" if any(isinstance(b, ToolUse) for b in step.blocks) else "end_turn"
    events.append(("message_delta", {"type": "message_delta", "delta": {"stop_reason": stop, "stop_sequence": None},
                                     "usage": {"output_tokens": step.output_tokens}}))
    events.append(("message_stop", {"type": "message_stop"}))
    return events


def message_body(message_id: str, step: Reply) -> dict[str, Any]:
    """The non-streamed answer: the whole message in one JSON body."""
    content: list[dict[str, Any]] = [
        {"type": "text", "text": b.text} if isinstance(b, Text)
        else {"type": "tool_use", "id": b.id or f"toolu_{message_id}_{i}", "name": b.name, "input": b.input}
        for i, b in enumerate(step.blocks)]
    stop = "tool_use" if any(isinstance(b, ToolUse) for b in step.blocks) else "end_turn"
    return {"id": message_id, "type": "message", "role": "assistant", "model": MODEL, "content": content,
            "stop_reason": stop, "stop_sequence": None,
            "usage": {"input_tokens": step.input_tokens, "output_tokens": step.output_tokens,
                      "cache_creation_input_tokens": step.cache_creation_input_tokens,
                      "cache_read_input_tokens": step.cache_read_input_tokens}}


def _block_events(index: int, block: Block, tool_id: str) -> list[tuple[str, dict[str, Any]]]:
    if isinstance(block, Text):
        start: dict[str, Any] = {"type": "text", "text": ""}
        delta: dict[str, Any] = {"type": "text_delta", "text": block.text}
    else:
        start = {"type": "tool_use", "id": block.id or f"toolu_{tool_id}", "name": block.name, "input": {}}
        delta = {"type": "input_json_delta", "partial_json": json.dumps(block.input)}
    return [("content_block_start", {"type": "content_block_start", "index": index, "content_block": start}),
            ("content_block_delta", {"type": "content_block_delta", "index": index, "delta": delta}),
            ("content_block_stop", {"type": "content_block_stop", "index": index})]


class Handler(BaseHTTPRequestHandler):
    server_state: Server  # set on the subclass made per server
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self.server_state.paths.append(f"GET {self.path}")
        self._json(404, {"type": "error", "error": {"type": "not_found_error", "message": "fake: no such path"}})

    def do_HEAD(self) -> None:
        self.server_state.paths.append(f"HEAD {self.path}")
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_POST(self) -> None:
        state = self.server_state
        state.paths.append(f"POST {self.path}")
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length)
        if not self.path.startswith("/v1/messages") or "count_tokens" in self.path:
            self._json(404, {"type": "error", "error": {"type": "not_found_error", "message": "fake: no such path"}})
            return
        body = json.loads(raw or b"{}")
        step = state.next_step(body)
        n = len(state.requests)
        match step:
            case None:
                self._json(500, {"type": "error", "error": {"type": "api_error",
                                                            "message": "fake server: the script has no more steps"}})
            case HttpError():
                self._json(step.status, {"type": "error", "error": {"type": step.kind, "message": step.message}},
                           step.headers)
            case Reply() if not body.get("stream"):  # Claude Code's fallback when a stream fails
                self._json(200, message_body(f"msg_fake{n:04d}", step))
            case Reply():
                self._stream(sse_events(f"msg_fake{n:04d}", step))
            case Drop():
                self._stream(sse_events(f"msg_fake{n:04d}", step.reply)[: step.after], complete=False)
            case Hang():
                if body.get("stream"):
                    self._stream(sse_events(f"msg_fake{n:04d}", step.reply)[:1], complete=False, close=False)
                state.stopping.wait(120)

    def _json(self, status: int, body: dict[str, Any], headers: tuple[tuple[str, str], ...] = ()) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("request-id", "req_fake")
        for name, value in headers:
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def _stream(self, events: list[tuple[str, dict[str, Any]]], complete: bool = True, close: bool = True) -> None:
        """SSE with `Connection: close`, so a cut stream is a connection closed midway (or, not
        `close`, a stream left open)."""
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Connection", "close")
        self.end_headers()
        for name, data in events:
            self.wfile.write(f"event: {name}\ndata: {json.dumps(data)}\n\n".encode())
            self.wfile.flush()
        self.close_connection = True
        if not complete and close:  # no message_stop: a cut connection, reset rather than closed cleanly
            self.connection.shutdown(socket.SHUT_RDWR)


@contextmanager
def serve(script: list[Step], rest: Step | None = None) -> Iterator[Server]:
    """A fake Messages API answering `script` in order, then `rest` to every further request, on
    127.0.0.1 while the block runs."""
    state = Server(list(script), rest)
    handler = type("ScriptedHandler", (Handler,), {"server_state": state})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    httpd.daemon_threads = True
    state.port = httpd.server_address[1]
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        state.stopping.set()
        httpd.shutdown()
        httpd.server_close()
        thread.join(10)


def closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on: connections to it are refused."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(condition: Any, timeout: float = 60.0, interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {condition}")
