"""Pure ASGI: request ids, the body-size limit and the in-flight gauge.

`RequestContextMiddleware` does this for every route of the application. The proxy routes
(the hot path: every API's inference POSTs, see `main.fast_routes`) skip the framework
altogether: `serve_proxy` does the same per-request work itself and sends the proxy's
`Reply` straight to the server, which saves the middleware and routing layers on every
request and the task group Starlette spends on every stream.
The answers are byte for byte what the routed path would send.
"""

from __future__ import annotations

import asyncio
import logging
import re
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tollgate_gateway import metrics
from tollgate_gateway.chat.service import error_reply, new_id
from tollgate_gateway.errors import ApiError, error_response, internal_error, service_unavailable
from tollgate_gateway.storage.outage import UNAVAILABLE
from tollgate_gateway.tracing import RequestTrace, Tracing

if TYPE_CHECKING:
    from tollgate_gateway.chat.schemas import Endpoint
    from tollgate_gateway.chat.service import Reply

# A fast route's handler: (body, Authorization, x-api-key, request id, trace) -> its answer.
Handle = Callable[[bytes, str | None, str | None, str, RequestTrace | None], Awaitable["Reply"]]


@dataclass(frozen=True, slots=True)
class FastRoute:
    """A POST that `serve_proxy` serves: its endpoint (metrics), its handler, the tracing."""

    endpoint: Endpoint
    handle: Handle
    tracing: Tracing


log = logging.getLogger("tollgate_gateway.errors")

_SAFE_ID = re.compile(rb"^[A-Za-z0-9._:-]{1,64}$")


class BodyTooLarge(Exception):
    pass


def _too_large_error(max_body: int) -> ApiError:
    return ApiError(
        413,
        f"The request body is larger than the limit of {max_body} bytes.",
        code="request_too_large",
    )


class RequestContextMiddleware:
    """Gives every request an id (the client's `x-request-id` when sane), echoes it on the
    response, and refuses bodies over the limit with 413 before reading them whole."""

    def __init__(self, app: ASGIApp, max_body_bytes: int) -> None:
        self.app = app
        self.max_body = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id: bytes | None = None
        length: int | None = None
        for name, value in scope["headers"]:
            if name == b"x-request-id" and _SAFE_ID.match(value):
                request_id = value
            elif name == b"content-length" and value.isdigit():
                length = int(value)
        rid = request_id or b"req_" + uuid.uuid4().hex.encode()
        scope.setdefault("state", {})["request_id"] = rid.decode()

        started = False

        async def send_with_id(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                message["headers"] = [*message.get("headers", []), (b"x-request-id", rid)]
            await send(message)

        if length is not None and length > self.max_body:
            await self._too_large(scope, receive, send_with_id)
            return

        received = 0
        max_body = self.max_body

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > max_body:
                    raise BodyTooLarge
            return message

        metrics.IN_FLIGHT.inc()
        try:
            await self.app(scope, limited_receive, send_with_id)
        except BodyTooLarge:
            await self._too_large(scope, receive, send_with_id)
        except Exception:
            # One log line with the request id, and the endpoint's error shape; handled here
            # rather than by Starlette, which would log the same error a second time.
            log.exception("unhandled error on %s (request %s)", scope["path"], rid.decode())
            if started:
                raise
            await error_response(scope["path"], internal_error())(scope, receive, send_with_id)
        finally:
            metrics.IN_FLIGHT.dec()

    async def _too_large(self, scope: Scope, receive: Receive, send: Send) -> None:
        await error_response(scope["path"], _too_large_error(self.max_body))(scope, receive, send)


async def serve_proxy(
    scope: Scope,
    receive: Receive,
    send: Send,
    route: FastRoute,
    max_body: int,
) -> None:
    """One proxy request, from the raw ASGI scope to the last byte of its answer."""
    request_id: bytes | None = None
    length: int | None = None
    authorization: str | None = None
    x_api_key: str | None = None
    for name, value in scope["headers"]:
        if name == b"authorization":
            if authorization is None:
                authorization = value.decode("latin-1")
        elif name == b"x-api-key":
            if x_api_key is None:
                x_api_key = value.decode("latin-1")
        elif name == b"x-request-id":
            if _SAFE_ID.match(value):
                request_id = value
        elif name == b"content-length" and value.isdigit():
            length = int(value)
    rid = request_id or b"req_" + new_id().encode()
    path: str = scope["path"]
    if length is not None and length > max_body:
        _count_too_large(route.endpoint)
        await _send_whole(send, error_reply(path, _too_large_error(max_body)), rid)
        return
    metrics.IN_FLIGHT.inc()
    watch: _Disconnect | None = None
    trace: RequestTrace | None = None
    try:
        reply: Reply
        try:
            body = await _read_body(receive, max_body)
            if body is None:
                return  # the client left before sending its request; nobody to answer
            watch = _Disconnect(receive)
            if route.tracing.enabled:
                trace = route.tracing.start("POST", path, scope["headers"], rid.decode())
            reply = await route.handle(body, authorization, x_api_key, rid.decode(), trace)
        except BodyTooLarge:
            _count_too_large(route.endpoint)
            reply = error_reply(path, _too_large_error(max_body))
        except ApiError as exc:
            reply = error_reply(path, exc)
        except asyncio.CancelledError:
            if watch is None or not watch.left():
                raise
            return  # the client left while we waited for the model: nobody to answer
        except UNAVAILABLE:
            # Postgres down where nothing could be answered from memory (e.g. a budget's first
            # use this month): the caches and the outage tracker have logged it.
            if trace is not None:
                trace.finish(503, "service_unavailable", {})
            reply = error_reply(path, service_unavailable("The database"))
        except Exception:
            log.exception("unhandled error on %s (request %s)", path, rid.decode())
            if trace is not None:
                trace.finish(500, "internal_error", {})
            reply = error_reply(path, internal_error())
        try:
            if reply.stream is None:
                await _send_whole(send, reply, rid)
            else:
                await _send_stream(send, reply, rid)
        except asyncio.CancelledError:
            if watch is None or not watch.left():
                raise
    finally:
        if watch is not None:
            watch.stop()
        metrics.IN_FLIGHT.dec()


def _count_too_large(endpoint: Endpoint) -> None:
    metrics.REQUESTS.labels("", endpoint.value, "413", "request_too_large").inc()


class _Disconnect:
    """Watches for the client going away once its request is read, and cancels the task
    serving it at once, whatever it waits for (the model's first byte, the next chunk,
    a send); the proxy then closes the upstream request, which stops the generation, and
    settles. `left()` tells such a cancellation from any other (and takes it back).

    The watching task starts only once the request has taken `DELAY` seconds: most
    non-streamed requests are answered sooner and never pay for one, and a client that left
    meanwhile is seen as soon as it starts."""

    DELAY = 0.05
    __slots__ = ("_gone", "_receive", "_task", "_timer", "_watcher")

    def __init__(self, receive: Receive) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._task = task
        self._receive = receive
        self._gone = False
        self._watcher: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = asyncio.get_running_loop().call_later(
            self.DELAY, self._start
        )

    def _start(self) -> None:
        self._timer = None
        self._watcher = asyncio.get_running_loop().create_task(self._watch())

    async def _watch(self) -> None:
        while True:
            message = await self._receive()
            if message["type"] == "http.disconnect":
                break
        if self._watcher is not None:  # not stopped meanwhile: the request is still served
            self._gone = True
            self._task.cancel()

    def left(self) -> bool:
        if self._gone:
            self._gone = False
            self._task.uncancel()  # our own cancellation: the client left, the request is over
            return True
        return False

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        watcher, self._watcher = self._watcher, None
        if watcher is not None:
            watcher.cancel()


async def _read_body(receive: Receive, max_body: int) -> bytes | None:
    message = await receive()
    if message["type"] != "http.request":
        return None
    body: bytes = message.get("body", b"")
    if len(body) > max_body:
        raise BodyTooLarge
    if not message.get("more_body", False):
        return body
    parts = [body]
    received = len(body)
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return None
        chunk = message.get("body", b"")
        received += len(chunk)
        if received > max_body:
            raise BodyTooLarge
        parts.append(chunk)
        if not message.get("more_body", False):
            return b"".join(parts)


async def _send_whole(send: Send, reply: Reply, rid: bytes) -> None:
    try:
        if reply.settle is not None:
            # Usage and limits are settled before the answer leaves, and one loop turn lets
            # the settlement's write (batched with the turn's other Redis commands) go out
            # first: a SIGKILL after the answer never loses its usage row. (Its metrics and
            # access line come after the answer, in `after`.)
            reply.settle()
            await asyncio.sleep(0)
        await send(
            {
                "type": "http.response.start",
                "status": reply.status,
                "headers": [*reply.headers, (b"x-request-id", rid)],
            }
        )
        await send({"type": "http.response.body", "body": reply.body, "more_body": False})
    finally:
        if reply.after is not None:
            reply.after()


async def _send_stream(send: Send, reply: Reply, rid: bytes) -> None:
    """Relay the chunks as they come. The stream is closed, and `after` called, whatever
    happens, even when the response cannot be started."""
    assert reply.stream is not None
    stream = reply.stream
    try:
        await send(
            {
                "type": "http.response.start",
                "status": reply.status,
                "headers": [*reply.headers, (b"x-request-id", rid)],
            }
        )
        async for chunk in stream:
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})
    finally:
        # Cancelled while sending, the proxy's generator waits at a yield: close it now, so
        # that the upstream request ends and usage is recorded at once.
        try:
            await stream.aclose()
        finally:
            if reply.after is not None:
                reply.after()
