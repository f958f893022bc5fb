"""The Ollama stand-in's HTTP server: a protocol-faithful test double, **not Ollama**.

It speaks Ollama's native API and its OpenAI-compatible ``/v1`` API with deterministic,
fake "inference", plus test controls under ``/_standin/`` that real Ollama does not have.

Entry points:

* :func:`create_app` builds the :class:`aiohttp.web.Application`;
* :func:`run_standin` (async context manager) serves it on a host/port (``0`` = any free
  port) and yields a :class:`StandinServer` with the bound ``url``;
* :func:`standin_in_thread` does the same on a background thread, for synchronous code;
* :func:`serve_forever` runs until cancelled (the CLI).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass

from aiohttp import web

from . import api_anthropic, api_control, api_inference, api_models, api_openai, api_responses
from .config import StandinConfig
from .faults import IMMEDIATE, Fault
from .state import STATE, StandinState
from .streaming import DROPPED_KEY, pause
from .wire import BODY_KEY, error_response, json_response

# When a request came (the request log's ``arrived``: the order the server saw them in).
ARRIVED_KEY: web.RequestKey[float] = web.RequestKey("tollgate_standin_arrived", float)

logger = logging.getLogger("tollgate_standin")

CONTROL_PREFIX = "/_standin/"
MAX_BODY = 64 * 1024 * 1024
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def create_app(config: StandinConfig) -> web.Application:
    """The stand-in as an aiohttp application (no socket bound yet)."""
    app = web.Application(middlewares=[_standin_middleware], client_max_size=MAX_BODY)
    app[STATE] = StandinState.from_config(config)
    app.on_response_prepare.append(_drop_server_header)
    _add_ollama_routes(app)
    api_control.add_routes(app)
    return app


def _add_ollama_routes(app: web.Application) -> None:
    router = app.router
    router.add_get("/", api_models.root)
    router.add_get("/api/version", api_models.version)
    router.add_get("/api/tags", api_models.tags)
    router.add_get("/api/ps", api_models.ps, allow_head=False)
    router.add_post("/api/show", api_models.show)
    router.add_delete("/api/delete", api_models.delete)
    router.add_post("/api/copy", api_models.copy)
    router.add_post("/api/create", api_models.create)
    router.add_post("/api/pull", api_models.pull)
    router.add_post("/api/chat", api_inference.chat)
    router.add_post("/api/generate", api_inference.generate)
    router.add_post("/api/embed", api_inference.embed)
    router.add_post("/api/embeddings", api_inference.embeddings)
    router.add_post("/v1/chat/completions", api_openai.chat_completions)
    router.add_post("/v1/completions", api_openai.completions)
    router.add_post("/v1/embeddings", api_openai.embeddings)
    router.add_post("/v1/responses", api_responses.responses)
    router.add_post("/v1/messages", api_anthropic.messages)
    router.add_get("/v1/models", api_openai.list_models, allow_head=False)
    router.add_get("/v1/models/{model}", api_openai.retrieve_model, allow_head=False)


async def _drop_server_header(request: web.Request, response: web.StreamResponse) -> None:
    """Ollama sends no ``Server`` header (aiohttp would name itself)."""
    response.headers.popall("Server", None)


@web.middleware
async def _standin_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.path.startswith(CONTROL_PREFIX):
        return await handler(request)
    state = request.app[STATE]
    state.stats.requests[request.path] += 1
    request[ARRIVED_KEY] = time.time()
    if state.config.strict_host and not _host_allowed(request):
        response: web.StreamResponse = web.Response(status=403)
    else:
        response = await _handle(request, handler, state)
    _record(request, state, response)
    return response


async def _handle(
    request: web.Request, handler: Handler, state: StandinState
) -> web.StreamResponse:
    for fault in state.faults.take(request.path, IMMEDIATE):
        state.stats.faults_applied += 1
        if fault.kind == "delay":
            await pause(fault.delay_ms / 1000)
        else:
            return _fault_response(request.path, fault)
    try:
        return await handler(request)
    except web.HTTPNotFound:
        return await _trailing_slash_redirect(request) or _plain(404, "404 page not found")
    except web.HTTPMethodNotAllowed as exc:
        # Gin lists the allowed methods in the order their routes were first registered.
        allow = ", ".join(m for m in ("HEAD", "GET", "POST", "DELETE") if m in exc.allowed_methods)
        response = _plain(405, "405 method not allowed")
        response.headers["Allow"] = allow
        return response


def _plain(status: int, text: str) -> web.Response:
    """Gin's default 404/405 bodies (``text/plain`` without a charset)."""
    return web.Response(status=status, body=text.encode(), headers={"Content-Type": "text/plain"})


async def _trailing_slash_redirect(request: web.Request) -> web.Response | None:
    """Gin's ``RedirectTrailingSlash``: ``/api/tags/`` answers 301 (GET) or 307 to ``/api/tags``."""
    path = request.path
    if path == "/" or not path.endswith("/"):
        return None
    target = path.rstrip("/") or "/"
    match = await request.app.router.resolve(request.clone(rel_url=target))
    if isinstance(match.http_exception, web.HTTPNotFound):
        return None
    if request.method == "GET":
        body = f'<a href="{target}">Moved Permanently</a>.\n\n'.encode()
        headers = {"Content-Type": "text/html; charset=utf-8", "Location": target}
        return web.Response(status=301, body=body, headers=headers)
    headers = {"Location": target}
    if request.method == "HEAD":
        headers["Content-Type"] = "text/html; charset=utf-8"
    return web.Response(status=307, headers=headers)


def _fault_response(path: str, fault: Fault) -> web.Response:
    if isinstance(fault.body, str):
        return web.Response(status=fault.status, text=fault.body)
    if fault.body is not None:
        return json_response(fault.body, status=fault.status)
    if path.startswith("/v1/messages"):
        return api_anthropic.anthropic_error(fault.status, fault.message)
    if path.startswith("/v1/"):
        return api_openai.openai_error(fault.status, fault.message)
    return error_response(fault.status, fault.message)


def _record(request: web.Request, state: StandinState, response: web.StreamResponse) -> None:
    status = 0 if request.get(DROPPED_KEY) else response.status
    headers = (
        {str(k): v for k, v in request.headers.items()} if state.config.request_log_size else {}
    )
    state.stats.record(
        request.method, request.path, status, headers, request.get(BODY_KEY), request[ARRIVED_KEY]
    )


def _host_allowed(request: web.Request) -> bool:
    """Ollama's Host check, which it applies only when bound to loopback (opt-in here)."""
    if not _bound_to_loopback(request):
        return True
    host = request.host.rsplit(":", 1)[0].strip("[]").lower() if request.host else ""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        allowed_suffix = host.endswith((".localhost", ".local", ".internal"))
        return host in ("", "localhost", socket.gethostname().lower()) or allowed_suffix
    return address.is_loopback or address.is_private or address.is_unspecified


def _bound_to_loopback(request: web.Request) -> bool:
    sockname = request.transport.get_extra_info("sockname") if request.transport else None
    try:
        return ipaddress.ip_address(sockname[0]).is_loopback if sockname else False
    except ValueError:
        return False


@dataclass(slots=True)
class StandinServer:
    """A running stand-in."""

    app: web.Application
    runner: web.AppRunner
    host: str
    port: int

    @property
    def url(self) -> str:
        """Base URL to give clients (``http://host:port``, no trailing slash)."""
        host = self.host
        if host in ("0.0.0.0", "::", ""):
            host = "127.0.0.1"
        return f"http://[{host}]:{self.port}" if ":" in host else f"http://{host}:{self.port}"

    @property
    def state(self) -> StandinState:
        return self.app[STATE]

    @property
    def config(self) -> StandinConfig:
        return self.state.config

    async def close(self) -> None:
        await self.runner.cleanup()


def _bind(host: str, port: int) -> socket.socket:
    family, kind, proto, _, address = socket.getaddrinfo(
        host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(address)
    sock.setblocking(False)
    return sock


async def start_standin(config: StandinConfig) -> StandinServer:
    """Bind and start serving; call :meth:`StandinServer.close` when done."""
    app = create_app(config)
    runner = web.AppRunner(
        app,
        handler_cancellation=True,
        shutdown_timeout=1.0,
        access_log=logger if config.access_log else None,
    )
    await runner.setup()
    sock = _bind(config.host, config.port)
    try:
        await web.SockSite(runner, sock, backlog=4096).start()
    except BaseException:
        sock.close()
        await runner.cleanup()
        raise
    host, port = sock.getsockname()[:2]
    server = StandinServer(app=app, runner=runner, host=str(host), port=int(port))
    logger.info(
        "Ollama stand-in (not Ollama) listening on %s (version %s, models: %s)",
        server.url,
        config.version,
        ", ".join(config.models) or "none",
    )
    return server


@asynccontextmanager
async def run_standin(config: StandinConfig | None = None) -> AsyncIterator[StandinServer]:
    """Serve for the duration of the ``async with`` block (default: loopback, free port)."""
    server = await start_standin(config or StandinConfig(port=0))
    try:
        yield server
    finally:
        await server.close()


async def serve_forever(config: StandinConfig) -> None:
    """Serve until cancelled."""
    async with run_standin(config):
        await asyncio.Event().wait()


@contextmanager
def standin_in_thread(config: StandinConfig | None = None) -> Iterator[StandinServer]:
    """Serve on a private event loop in a daemon thread (for synchronous callers)."""
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    result: list[StandinServer | BaseException] = []

    def run() -> None:
        asyncio.set_event_loop(loop)
        try:
            server = loop.run_until_complete(start_standin(config or StandinConfig(port=0)))
        except BaseException as exc:  # handed to the caller's thread
            result.append(exc)
            ready.set()
            return
        result.append(server)
        ready.set()
        loop.run_forever()
        loop.run_until_complete(server.close())

    thread = threading.Thread(target=run, name="ollama-standin", daemon=True)
    thread.start()
    ready.wait()
    outcome = result[0]
    try:
        if isinstance(outcome, BaseException):
            raise outcome
        yield outcome
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join()
        loop.close()
