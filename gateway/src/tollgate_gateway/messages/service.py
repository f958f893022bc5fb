"""`POST /v1/messages` through the proxy's keys, limits and usage, to Ollama's ``/v1/messages``."""

from __future__ import annotations

import functools
import time
from typing import Any

import orjson

from tollgate_gateway import metrics
from tollgate_gateway.chat.schemas import Endpoint
from tollgate_gateway.chat.service import (
    SSE_HEADERS,
    Call,
    ProxyService,
    Reply,
    constrain,
    json_reply,
    new_id,
    upstream_json,
)
from tollgate_gateway.errors import ApiError, upstream_error
from tollgate_gateway.keys.service import KeyRecord
from tollgate_gateway.messages.schemas import (
    StreamState,
    api_key,
    estimate_tokens,
    missing_key,
    parse_request,
    rewrite_message,
)
from tollgate_gateway.sse import relay
from tollgate_gateway.storage.upstream import read_body
from tollgate_gateway.tracing import RequestTrace

UPSTREAM_PATH = "/v1/messages"


class MessagesService:
    def __init__(self, proxy: ProxyService) -> None:
        self.proxy = proxy

    async def authenticate(
        self, x_api_key: str | None, authorization: str | None, trace: RequestTrace | None = None
    ) -> KeyRecord:
        key = api_key(x_api_key, authorization)
        if key is None:
            metrics.AUTH_FAILURES.inc()
            raise missing_key()
        return await self.proxy.authenticate_key(key, trace)

    async def create(
        self,
        raw: bytes,
        authorization: str | None,
        x_api_key: str | None,
        request_id: str,
        trace: RequestTrace | None = None,
    ) -> Reply:
        """`POST /v1/messages`, called as `middleware.Handle`."""
        started = time.perf_counter()
        key: KeyRecord | None = None
        model: str | None = None
        try:
            key = await self.authenticate(x_api_key, authorization, trace)
            parsed = parse_request(raw)
            model = parsed.model
            alias = await self.proxy.resolve(key, parsed.model)
            constrain(Endpoint.MESSAGES, alias, parsed)
            admission, estimate = await self.proxy.admit(
                Endpoint.MESSAGES, key, alias, parsed, raw, request_id, trace
            )
        except ApiError as exc:
            self.proxy.refused(Endpoint.MESSAGES, request_id, exc, key, model, started, trace)
            raise
        call = Call(request_id, Endpoint.MESSAGES, key, alias, parsed, admission, estimate)
        call.trace = trace
        return await self.proxy.serve(call, self._forward(call), _overloaded_is_529)

    async def _forward(self, call: Call) -> Reply:
        body = call.parsed.body
        body["model"] = call.alias.backend_tag
        if call.admission.cap is not None:  # reserved for exactly this many output tokens
            body["max_tokens"] = call.admission.cap
        resp = await self.proxy.send_upstream(call, UPSTREAM_PATH, body, self.proxy.traced(call))
        if resp.status != 200:
            payload = await read_body(resp)
            resp.release()
            raise upstream_error(resp.status, payload, call.alias.alias)
        message_id = "msg_" + new_id()
        if not call.parsed.stream:
            payload = await read_body(resp)
            resp.release()
            data = upstream_json(payload)
            call.prompt_tokens, call.completion_tokens = rewrite_message(
                data, message_id, call.alias.alias
            )
            reply = json_reply(orjson.dumps(data))
            reply.settle = functools.partial(self.proxy.settle_whole, call, reply)
            return reply
        translator = _Stream(call, StreamState(message_id, call.alias.alias))
        return Reply(200, list(SSE_HEADERS), stream=relay(self.proxy, call, resp, translator))

    async def count_tokens(
        self,
        raw: bytes,
        x_api_key: str | None,
        authorization: str | None,
        trace: RequestTrace | None = None,
    ) -> bytes:
        """``/v1/messages/count_tokens``: Ollama serves no token count, so this is
        `estimate_tokens` (documented in the README); the key and model are checked."""
        key = await self.authenticate(x_api_key, authorization, trace)
        body = _count_body(raw)
        await self.proxy.resolve(key, body["model"])
        tokens = estimate_tokens(body)
        if trace is not None:
            trace.root.set_attribute("tollgate.alias", body["model"])
            trace.root.set_attribute("gen_ai.usage.input_tokens", tokens)
        return orjson.dumps({"input_tokens": tokens})


def _count_body(raw: bytes) -> dict[str, Any]:
    # the same checks as a message, without max_tokens
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        body = None
    if isinstance(body, dict) and "max_tokens" not in body:
        raw = orjson.dumps({**body, "max_tokens": 1})
    return parse_request(raw).body


def _overloaded_is_529(exc: ApiError) -> None:
    if exc.code == "upstream_overloaded":
        exc.status = 529  # Anthropic's "overloaded"; its clients retry it


class _Stream:
    """The `sse.Translator` of a Messages stream."""

    def __init__(self, call: Call, state: StreamState) -> None:
        self.call = call
        self.state = state
        self.complete = False

    def passthrough(self, name: str, data: bytes) -> bytes | None:
        out = self.state.passthrough(name, data)
        if out is not None and self.state.first_delta:
            self.call.first_token()
        return out

    async def event(self, name: str, data: dict[str, Any]) -> bytes:
        out = self.state.rewrite(name, data)
        if self.state.first_delta:
            self.call.first_token()
        if self.state.failed:
            self.call.status, self.call.error_class = 502, "upstream_stream_error"
            metrics.UPSTREAM_ERRORS.labels("stream").inc()
        self.complete = self.state.complete
        return out

    def broken(self, message: str) -> bytes:
        return StreamState.error_event(message)

    def settle(self) -> None:
        state = self.state
        self.call.prompt_tokens = state.input_tokens
        # before message_delta (a client that left, a broken upstream): the deltas so far
        self.call.completion_tokens = state.output_tokens or state.deltas
