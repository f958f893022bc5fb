"""Pure ASGI middleware: request ids, the body-size limit and the in-flight gauge."""

from __future__ import annotations

import re
import uuid

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tollgate_gateway import metrics
from tollgate_gateway.errors import ApiError, error_response

_SAFE_ID = re.compile(rb"^[A-Za-z0-9._:-]{1,64}$")


class BodyTooLarge(Exception):
    pass


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

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
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
        finally:
            metrics.IN_FLIGHT.dec()

    async def _too_large(self, scope: Scope, receive: Receive, send: Send) -> None:
        err = ApiError(
            413,
            f"The request body is larger than the limit of {self.max_body} bytes.",
            code="request_too_large",
        )
        await error_response(scope["path"], err)(scope, receive, send)
