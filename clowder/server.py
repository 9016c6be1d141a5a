"""`clowder serve`: a JSON API, live streams (Server-Sent Events) and a web page over a root.
It reads the tree and writes nothing but request files, through the function the CLI uses."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import re
import secrets
import socket
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Annotated, Any, ClassVar

import uvicorn
from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi import Path as PathParam
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field
from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from clowder import known, requests
from clowder.errors import ClowderError
from clowder.known import NotFound
from clowder.spec import NAME_PATTERN
from clowder.streams import Hub, follow_log, follow_pipeline_logs
from clowder.tree import Root
from clowder.views import decisions, diffs, reader, records
from clowder.views.logs import locate
from clowder.views.pipeline_logs import PipelineLogs

logger = logging.getLogger("uvicorn.error")
WEB_DIR = Path(__file__).parent / "web"
TOKEN_FILE = "serve.token"
# Beyond any log, and within what every Linux file system can seek to (a seek to 2**63-1 fails).
MAX_OFFSET = 1 << 40
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "[::1]", "::1"})

Name = Annotated[str, PathParam(pattern=NAME_PATTERN, max_length=64, description="A pipeline or job name.")]
Point = Annotated[str, Query(pattern=diffs.POINT_PATTERN, max_length=71,
                              description="A job (its final commit) or JOB@ATTEMPT, e.g. dev or test@2.")]
NameQuery = Annotated[str | None, Query(pattern=NAME_PATTERN, max_length=64, description="Only this pipeline.")]


class ErrorBody(BaseModel):
    detail: str


class Info(BaseModel):
    root: str
    version: str


class RequestView(BaseModel):
    id: str
    action: str
    pipeline: str
    job: str | None


class Decision(BaseModel):
    """An approval's or a rejection's body (optional): why."""

    comment: str = Field("", max_length=10_000, description="Recorded with the decision; a rejection's message")


# Who decides through the API: the token's holder (the page, or a script that read serve.token).
WEB_USER = "web"


class WhyView(BaseModel):
    pipeline: str
    job: str
    state: str
    verdict: str  # starts, running, waits, skipped, fails, cancelled, ran
    cause: str  # trigger, needs, condition, resources, max_parallel, budget, backoff, request, blocked, fixups
    reason: str
    subject: str | None  # the upstream, pool, request or fix-ups named
    at: str | None  # when a wait ends, if known


def _error(description: str) -> dict[str, Any]:
    # Spelled out rather than given as a `model`: FastAPI would document a model under the route's
    # own media type, which for the log route is text/plain, while errors are always JSON.
    return {"description": description, "content": {"application/json": {"schema": ErrorBody.model_json_schema()}}}


ERRORS: dict[int | str, dict[str, Any]] = {
    400: _error("Bad request"),
    404: _error("No such pipeline, job, attempt or log"),
}
AUTH_ERRORS: dict[int | str, dict[str, Any]] = {
    **ERRORS, 401: _error("Missing or wrong token"),
    409: _error("The job or pipeline is not in a state the action applies to (e.g. a retry of a job that succeeded)"),
}
# One Server-Sent Event: `event` names it, `data` is JSON text, `id` (on log events) the offset reached.
SSE = {"text/event-stream": {"schema": {"type": "object", "properties": {
    "event": {"type": "string"}, "data": {"type": "string"}, "id": {"type": "string"}}}}}


# -- the token ------------------------------------------------------------------------------------

def token_file(root: Root) -> Path:
    return root.state_dir / TOKEN_FILE


def load_token(root: Root) -> str:
    """The token POST actions need: kept in .clowder/serve.token (owner-only), so that a page
    opened before a restart keeps working; delete the file to make a new one."""
    path = token_file(root)
    with contextlib.suppress(FileNotFoundError):
        st = path.stat()
        token = path.read_text().strip()
        # A token others could have read is no secret: make a new one.
        if st.st_uid == os.getuid() and not st.st_mode & 0o077 and len(token) >= 32 and token.isascii():
            return token
    token = secrets.token_urlsafe(32)
    root.tmp_dir.mkdir(parents=True, exist_ok=True)
    tmp = root.tmp_dir / f".{TOKEN_FILE}.{os.getpid()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, (token + "\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    return token


# -- the app --------------------------------------------------------------------------------------

class Guard:
    """Refuses requests whose Host is not the loopback name they were sent to (a web page
    elsewhere could reach a loopback port through DNS rebinding), and sets headers that keep
    the page from loading anything but its own files or leaking the token in a Referer."""

    HEADERS: ClassVar[dict[str, str]] = {
        "content-security-policy": "default-src 'self'; img-src 'self' data:; base-uri 'none'; "
                                   "form-action 'none'; frame-ancestors 'none'",
        "x-content-type-options": "nosniff",
        "referrer-policy": "no-referrer",
        "cache-control": "no-store",
    }

    def __init__(self, app: ASGIApp, hosts: frozenset[str] | None) -> None:
        self.app = app
        self.hosts = hosts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self.hosts is not None and _hostname(Headers(scope=scope).get("host", "")) not in self.hosts:
            await JSONResponse({"detail": "unexpected Host header: use the address clowder serve printed"},
                               status_code=400)(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for k, v in self.HEADERS.items():
                    headers.setdefault(k, v)
            await send(message)

        await self.app(scope, receive, send_with_headers)


# host[:port] and nothing else: a name or IPv4 address, or an IPv6 address in brackets. A looser
# reading took `127.0.0.1:80@evil.com` for 127.0.0.1.
HOST_HEADER = re.compile(r"(?P<name>\[[0-9a-f:.]+\]|[a-z0-9.-]+)(?::(?P<port>[0-9]{1,5}))?")


def _hostname(host: str) -> str:
    """The name in a Host header, or '' if the header is not exactly host[:port] with a valid port.
    Any port is accepted: behind `ssh -L 9000:localhost:8765` the browser says localhost:9000, and a
    DNS-rebinding page can only change the name."""
    m = HOST_HEADER.fullmatch(host.lower())
    if m is None or (m["port"] is not None and not 0 < int(m["port"]) <= 65535):
        return ""
    return m["name"]


BEARER = HTTPBearer(auto_error=False, description="The token `clowder serve` printed (.clowder/serve.token).")


def authorized(request: Request, creds: Annotated[HTTPAuthorizationCredentials | None, Depends(BEARER)]) -> None:
    token: str = request.app.state.token
    if creds is None or not secrets.compare_digest(creds.credentials.encode(), token.encode()):
        raise HTTPException(401, "missing or wrong token: send `Authorization: Bearer <token>`",
                            headers={"WWW-Authenticate": "Bearer"})


def create_app(root: Root, token: str, hosts: frozenset[str] | None = LOOPBACK_HOSTS) -> FastAPI:
    """The app over `root`. `hosts`: the Host names accepted (None: any, for a non-loopback bind)."""
    hub = Hub(root)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        task = asyncio.create_task(hub.run())
        yield
        task.cancel()

    # No /docs or /redoc: FastAPI's would load their scripts from a CDN. /openapi.json stays.
    app = FastAPI(title="Clowder", version=_version(), lifespan=lifespan, docs_url=None, redoc_url=None,
                  description="Pipelines, jobs, attempts and logs of a Clowder root. GETs read the tree; "
                              "POSTs drop request files, as `clowder cancel` and `clowder retry` do.")
    app.state.token = token
    app.add_middleware(Guard, hosts=hosts)
    app.mount("/static", StaticFiles(directory=WEB_DIR), name="static")
    _errors(app)
    _page_routes(app, root)
    _read_routes(app, root)
    _log_routes(app, root)

    @app.get("/api/events", response_class=StreamingResponse, responses={**ERRORS, 200: {"content": SSE}})
    def events(pipeline: NameQuery = None) -> StreamingResponse:
        """State changes as Server-Sent Events: `job` ({pipeline, job, state, attempt}) and `pipeline`
        ({pipeline, state}; `removed` when it went); `resync` asks to refetch everything."""
        return StreamingResponse(hub.stream(pipeline), media_type="text/event-stream")

    _action_routes(app, root)
    _decision_routes(app, root)
    return app


def _page_routes(app: FastAPI, root: Root) -> None:
    @app.get("/", include_in_schema=False)
    def page() -> HTMLResponse:
        return HTMLResponse((WEB_DIR / "index.html").read_text())

    @app.get("/api/info", response_model=Info)
    def info() -> Info:
        """The root this server reads."""
        return Info(root=str(root.path), version=_version())


def _read_routes(app: FastAPI, root: Root) -> None:
    @app.get("/api/pipelines", response_model=list[records.PipelineEntry], responses=ERRORS)
    def pipelines(state: records.ReportState | None = None) -> list[records.PipelineEntry]:
        """Every pipeline with its state and job counts, as `clowder status` shows them."""
        return reader.entries(root, state)

    @app.get("/api/pipelines/{pipeline}", response_model=records.PipelineDetail, responses=ERRORS)
    def pipeline_detail(pipeline: Name) -> records.PipelineDetail:
        """A pipeline's jobs (states, attempts, durations, graph levels) and the edges between them."""
        return reader.pipeline_detail(root, pipeline)

    @app.get("/api/pipelines/{pipeline}/jobs/{job}", response_model=records.JobDetail, responses=ERRORS)
    def job_detail(pipeline: Name, job: Name) -> records.JobDetail:
        """A job's spec, status, attempts with artifacts (git blob ids) and consumed upstream commits,
        the jobs that consumed its commits, and its regression context."""
        return reader.job_detail(root, pipeline, job)

    @app.get("/api/pipelines/{pipeline}/jobs/{job}/why", response_model=WhyView, responses=ERRORS)
    def why(pipeline: Name, job: Name) -> WhyView:
        """Why the job ran, waits or was skipped, as `clowder why` says it: the scheduler's own
        decision about it now, with what decided it (`cause`) and what it names (`subject`)."""
        return WhyView(**decisions.why_json(decisions.why(root, pipeline, job)))

    @app.get("/api/pipelines/{pipeline}/diff", response_class=PlainTextResponse, responses=ERRORS)
    def diff(pipeline: Name, a: Point, b: Point | None = None) -> str:
        """`git diff` from `a` to `b`, or what `a` changed from what it started from, as
        `clowder diff` shows it. A point is a job (its final commit) or `job@attempt`."""
        return diffs.diff_text(root, pipeline, a, b)


def _log_routes(app: FastAPI, root: Root) -> None:
    @app.get("/api/pipelines/{pipeline}/jobs/{job}/logs", response_class=PlainTextResponse, response_model=None,
             responses={**ERRORS, 200: {"content": SSE, "description": "The log, or with follow, its stream"}})
    def logs(
        request: Request, pipeline: Name, job: Name,
        attempt: Annotated[int | None, Query(ge=1, le=1_000_000, description="Default: the latest.")] = None,
        follow: Annotated[bool, Query(description="Stream as Server-Sent Events until the attempt ends.")] = False,
        offset: Annotated[int, Query(ge=0, le=MAX_OFFSET, description="Start at this byte of the log.")] = 0,
    ) -> PlainTextResponse | StreamingResponse:
        """What an attempt wrote. With `follow`, `log` events carry new text as it is written (each
        event's id is the byte offset reached, so a reconnecting EventSource resumes) and an `end`
        event closes the stream once the attempt has ended."""
        log = locate(root, pipeline, job, attempt)
        f = log.open()
        if follow:
            return StreamingResponse(follow_log(log, _resume_offset(request, offset), f),
                                     media_type="text/event-stream")
        if f is None:
            return PlainTextResponse("")
        with f:
            f.seek(offset)
            data = f.read()
        return PlainTextResponse(data.decode(errors="replace"))


    @app.get("/api/pipelines/{pipeline}/logs", response_class=PlainTextResponse, response_model=None,
             responses={**ERRORS, 200: {"content": SSE, "description": "The logs, or with follow, their stream"}})
    def pipeline_logs(
        pipeline: Name,
        follow: Annotated[bool, Query(description="Stream as Server-Sent Events until the pipeline ends.")] = False,
    ) -> PlainTextResponse | StreamingResponse:
        """Every job's latest attempt's lines, each prefixed `job#attempt | `, in the order the jobs
        started, as `clowder logs PIPELINE` prints them. With `follow`, `log` events ({job, attempt,
        text}) carry the lines of every attempt as they are written, new jobs and retries included,
        and an `end` event ({state}) closes the stream once the pipeline has ended. A reconnect
        starts again from each job's latest attempt."""
        stream = PipelineLogs(root, pipeline, follow)
        if follow:
            return StreamingResponse(follow_pipeline_logs(stream), media_type="text/event-stream")
        return PlainTextResponse("".join(stream.prefixed(line) for line in stream if line is not None))


def _resume_offset(request: Request, offset: int) -> int:
    """Where a followed log starts: a reconnecting EventSource's Last-Event-ID, else `offset`."""
    last = request.headers.get("last-event-id", "")
    resume = last.isascii() and last.isdigit() and len(last) < 19 and int(last) <= MAX_OFFSET
    return int(last) if resume else offset


def drop_request(root: Root, pipeline: str, action: str, job: str | None, **data: Any) -> RequestView:
    """Drop a cancel, retry or rerun request file, with the checks `clowder cancel` / `retry` make."""
    paths = known.pipeline(root, pipeline)
    if job is not None:
        known.job(paths, job, with_spec=True)
    requests.check(paths, action, job)
    r = requests.drop(root, paths, action, job, **data)
    requests.wake(root, pipeline)
    return RequestView(id=r.id, action=action, pipeline=pipeline, job=job)


def _action_routes(app: FastAPI, root: Root) -> None:
    @app.post("/api/pipelines/{pipeline}/cancel", response_model=RequestView, status_code=202,
              responses=AUTH_ERRORS, dependencies=[Depends(authorized)])
    def cancel_pipeline(pipeline: Name) -> RequestView:
        """Cancel the whole pipeline (drops a request file, like `clowder cancel PIPELINE`)."""
        return drop_request(root, pipeline, "cancel", None)

    @app.post("/api/pipelines/{pipeline}/jobs/{job}/cancel", response_model=RequestView, status_code=202,
              responses=AUTH_ERRORS, dependencies=[Depends(authorized)])
    def cancel_job(pipeline: Name, job: Name) -> RequestView:
        """Cancel a job: its running attempt gets SIGTERM, then SIGKILL after the grace period."""
        return drop_request(root, pipeline, "cancel", job)

    @app.post("/api/pipelines/{pipeline}/jobs/{job}/retry", response_model=RequestView, status_code=202,
              responses=AUTH_ERRORS, dependencies=[Depends(authorized)])
    def retry_job(pipeline: Name, job: Name) -> RequestView:
        """Run a failed or cancelled job again, and what it gated (like `clowder retry`)."""
        return drop_request(root, pipeline, "retry", job)

    @app.post("/api/pipelines/{pipeline}/jobs/{job}/rerun", response_model=RequestView, status_code=202,
              responses=AUTH_ERRORS, dependencies=[Depends(authorized)])
    def rerun_job(pipeline: Name, job: Name, downstream: Annotated[bool, Query(
            description="Run every job after it again too, once it has run.")] = False) -> RequestView:
        """Run a job that ended, in any way, again (like `clowder rerun`; 409 if it has not ended)."""
        return drop_request(root, pipeline, "rerun", job, **({"downstream": True} if downstream else {}))


def _decision_routes(app: FastAPI, root: Root) -> None:
    def decide(pipeline: str, job: str, action: str, body: Decision | None) -> RequestView:
        paths = known.pipeline(root, pipeline)
        known.job(paths, job, with_spec=True)
        r = requests.decide(root, paths, action, job, WEB_USER, body.comment if body else "")
        return RequestView(id=r.id, action=action, pipeline=pipeline, job=job)

    @app.post("/api/pipelines/{pipeline}/jobs/{job}/approve", response_model=RequestView, status_code=202,
              responses=AUTH_ERRORS, dependencies=[Depends(authorized)])
    def approve_job(pipeline: Name, job: Name, body: Decision | None = None) -> RequestView:
        """Let a job waiting at its `when = "manual"` gate start (like `clowder approve`; by "web")."""
        return decide(pipeline, job, "approve", body)

    @app.post("/api/pipelines/{pipeline}/jobs/{job}/reject", response_model=RequestView, status_code=202,
              responses=AUTH_ERRORS, dependencies=[Depends(authorized)])
    def reject_job(pipeline: Name, job: Name, body: Decision | None = None) -> RequestView:
        """Fail a job waiting at its gate, with the comment as its message (like `clowder reject`)."""
        return decide(pipeline, job, "reject", body)


def _errors(app: FastAPI) -> None:
    async def not_found(request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=404)

    async def bad_request(request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=400)

    async def conflict(request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=409)

    app.add_exception_handler(NotFound, not_found)
    app.add_exception_handler(ClowderError, bad_request)
    app.add_exception_handler(requests.Refused, conflict)


def _version() -> str:
    try:
        return version("clowder")
    except PackageNotFoundError:
        return "0"


# -- serving --------------------------------------------------------------------------------------

@dataclass
class Prepared:
    server: uvicorn.Server
    socket: socket.socket
    token: str
    url: str  # the page, without the token
    loopback: bool

    def run(self) -> None:
        self.server.run(sockets=[self.socket])


def bind(host: str, port: int) -> socket.socket:
    try:
        family, kind, proto, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as e:
        raise ClowderError(f"--host {host}: {e.strerror}") from e
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(addr)
    except OSError as e:
        sock.close()
        raise ClowderError(f"cannot listen on {host}:{port}: {e.strerror}") from e
    sock.listen(128)
    return sock


def prepare(root: Root, host: str = "127.0.0.1", port: int = 8765) -> Prepared:
    """A server bound to host:port (0: any free port), ready to `run`; binding first tells the
    port before the server runs."""
    sock = bind(host, port)
    address, bound_port = sock.getsockname()[:2]
    loopback = ipaddress.ip_address(address).is_loopback
    token = load_token(root)
    hosts = LOOPBACK_HOSTS | {f"[{address}]" if ":" in address else address} if loopback else None
    app = create_app(root, token, hosts)
    config = uvicorn.Config(app, log_level="warning", lifespan="on", timeout_graceful_shutdown=1,
                            access_log=False)
    shown = f"[{address}]" if ":" in address else address
    return Prepared(uvicorn.Server(config), sock, token, f"http://{shown}:{bound_port}/", loopback)


def serve(root: Root, host: str, port: int, echo: Callable[[str], None]) -> None:
    """Serve until Ctrl-C or SIGTERM."""
    p = prepare(root, host, port)
    echo(f"clowder serve: {root.path}")
    echo(f"open {p.url}?token={p.token}")
    echo(f"cancel and retry need the header `Authorization: Bearer <token>`; the token is in {token_file(root)}")
    if not p.loopback:
        echo(f"warning: listening on {host}, not a loopback address: anyone who can reach it can read the logs")
    p.run()
