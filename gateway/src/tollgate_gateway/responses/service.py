"""`/v1/responses` through the proxy's keys, limits and usage, to Ollama's ``/v1/responses``,
with stored responses: ``store`` (default true) keeps each response and its conversation for
the key that made it; ``previous_response_id`` continues from one.

A stored response is written before the client sees it complete (the whole answer, or the
``response.completed`` event), so a chained request that follows at once finds it. When
the database cannot take it the response is still served, unstored (logged and counted).
"""

from __future__ import annotations

import functools
import logging
import time
from typing import Any

import orjson

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
from tollgate_gateway.responses.schemas import (
    DELTAS,
    TERMINAL,
    ResponsesRequest,
    Rewriter,
    conversation,
    error_event,
    listed_item,
    parse_request,
    previous_not_found,
    response_not_found,
    upstream_body,
    usage_tokens,
)
from tollgate_gateway.sse import frame, relay
from tollgate_gateway.storage.responses import ResponseStore, ResponseStoreUnavailable, Stored
from tollgate_gateway.storage.upstream import read_body
from tollgate_gateway.tracing import RequestTrace, now_ns

log = logging.getLogger(__name__)

UPSTREAM_PATH = "/v1/responses"


def _store_unavailable() -> ApiError:
    return ApiError(
        503,
        "Stored responses are unavailable right now; please retry.",
        type="server_error",
        code="store_unavailable",
        headers={"retry-after": "1"},
    )


class ResponsesService:
    def __init__(self, proxy: ProxyService, store: ResponseStore) -> None:
        self.proxy = proxy
        self.store = store

    async def create(
        self,
        raw: bytes,
        authorization: str | None,
        _x_api_key: str | None,
        request_id: str,
        trace: RequestTrace | None = None,
    ) -> Reply:
        """`POST /v1/responses`, called as `middleware.Handle` (an x-api-key header is not
        OpenAI's and is not read)."""
        started = time.perf_counter()
        key: KeyRecord | None = None
        model: str | None = None
        try:
            key = await self.proxy.authenticate(authorization, trace)
            request = parse_request(raw)
            parsed = request.parsed
            model = parsed.model
            alias = await self.proxy.resolve(key, parsed.model)
            constrain(Endpoint.RESPONSES, alias, parsed)
            items, carried = await self._conversation(key, request)
            # Ollama gets the stored conversation as well as this body: the prompt estimate
            # counts both, or a short body continuing a long one would reserve too little.
            admission, estimate = await self.proxy.admit(
                Endpoint.RESPONSES, key, alias, parsed, raw, request_id, trace, carried
            )
        except ApiError as exc:
            self.proxy.refused(Endpoint.RESPONSES, request_id, exc, key, model, started, trace)
            raise
        call = Call(request_id, Endpoint.RESPONSES, key, alias, parsed, admission, estimate)
        call.trace = trace
        return await self.proxy.serve(call, self._forward(call, request, items))

    async def _conversation(
        self, key: KeyRecord, request: ResponsesRequest
    ) -> tuple[list[Any], list[Any] | None]:
        """The input Ollama gets, and what of it the request body does not hold (the stored
        response it continues: its input and output)."""
        previous_id = request.previous_response_id
        if previous_id is None:
            return conversation(None, None, request.input), None
        try:
            previous = await self.store.get(previous_id, key.id)
        except ResponseStoreUnavailable as exc:
            raise _store_unavailable() from exc
        if previous is None:
            raise previous_not_found(previous_id)
        output = previous.response.get("output")
        return conversation(previous.input, output, request.input), [previous.input, output]

    async def _forward(self, call: Call, request: ResponsesRequest, items: list[Any]) -> Reply:
        body = upstream_body(call.parsed.body, call.alias.backend_tag, items)
        if call.admission.cap is not None:  # reserved for exactly this many output tokens
            body["max_output_tokens"] = call.admission.cap
        resp = await self.proxy.send_upstream(call, UPSTREAM_PATH, body, self.proxy.traced(call))
        if resp.status != 200:
            payload = await read_body(resp)
            resp.release()
            raise upstream_error(resp.status, payload, call.alias.alias)
        rewriter = Rewriter(
            "resp_" + new_id(), call.alias.alias, request.previous_response_id, request.store
        )
        saver = functools.partial(self._save, call, request, items)
        if call.parsed.stream:
            translator = _Stream(call, rewriter, saver)
            return Reply(200, list(SSE_HEADERS), stream=relay(self.proxy, call, resp, translator))
        payload = await read_body(resp)
        resp.release()
        data = upstream_json(payload)
        response = rewriter.response(data)
        call.prompt_tokens, call.completion_tokens = usage_tokens(response)
        await saver(response)
        reply = json_reply(orjson.dumps(response))
        reply.settle = functools.partial(self.proxy.settle_whole, call, reply)
        return reply

    async def _save(
        self, call: Call, request: ResponsesRequest, items: list[Any], response: dict[str, Any]
    ) -> None:
        if not request.store or response.get("status") != "completed":
            return
        try:
            await self.store.save(
                response["id"],
                call.key.id,
                call.alias.alias,
                request.previous_response_id,
                items,
                response,
            )
        except ResponseStoreUnavailable as exc:
            log.warning("response %s not stored: %s", response["id"], exc)

    # -- stored responses --------------------------------------------------------------
    async def _stored(
        self, response_id: str, authorization: str | None, trace: RequestTrace | None
    ) -> Stored:
        """The stored response of the calling key; 404 for any other key's."""
        key = await self.proxy.authenticate(authorization, trace)
        begun = now_ns() if trace is not None else 0
        try:
            stored = await self.store.get(response_id, key.id)
        except ResponseStoreUnavailable as exc:
            raise _store_unavailable() from exc
        finally:
            if trace is not None:
                trace.step("response_store get", begun, now_ns())
        if stored is None:
            raise response_not_found(response_id)
        return stored

    async def retrieve(
        self, response_id: str, authorization: str | None, trace: RequestTrace | None = None
    ) -> bytes:
        return orjson.dumps((await self._stored(response_id, authorization, trace)).response)

    async def input_items(
        self, response_id: str, authorization: str | None, trace: RequestTrace | None = None
    ) -> bytes:
        stored = await self._stored(response_id, authorization, trace)
        prefix = "item_" + response_id.removeprefix("resp_")
        data = [
            listed_item(item, f"{prefix}_{i}") if isinstance(item, dict) else item
            for i, item in enumerate(stored.input)
        ]
        page = {
            "object": "list",
            "data": data[::-1],  # newest first, OpenAI's default order
            "first_id": data[-1]["id"] if data else None,
            "last_id": data[0]["id"] if data else None,
            "has_more": False,
        }
        return orjson.dumps(page)

    async def delete(
        self, response_id: str, authorization: str | None, trace: RequestTrace | None = None
    ) -> bytes:
        key = await self.proxy.authenticate(authorization, trace)
        begun = now_ns() if trace is not None else 0
        try:
            deleted = await self.store.delete(response_id, key.id)
        except ResponseStoreUnavailable as exc:
            raise _store_unavailable() from exc
        finally:
            if trace is not None:
                trace.step("response_store delete", begun, now_ns())
        if not deleted:
            raise response_not_found(response_id)
        return orjson.dumps({"id": response_id, "object": "response", "deleted": True})


class _Stream:
    """The `sse.Translator` of a Responses stream."""

    def __init__(self, call: Call, rewriter: Rewriter, save: Any) -> None:
        self.call = call
        self.rewriter = rewriter
        self.save = save
        self.complete = False
        self.deltas = 0
        self.sequence = 0

    def passthrough(self, name: str, data: bytes) -> bytes | None:
        return None  # every event carries ids the rewriter maps to ours

    async def event(self, name: str, data: dict[str, Any]) -> bytes:
        kind = data.get("type") or name
        self.sequence = int(data.get("sequence_number") or self.sequence) + 1
        self.rewriter.event(data)
        if kind in DELTAS:
            self.deltas += 1
            self.call.first_token()
        elif kind in TERMINAL:
            self.complete = True
            response = data.get("response")
            if isinstance(response, dict):
                self.call.prompt_tokens, self.call.completion_tokens = usage_tokens(response)
                await self.save(response)
            if kind != "response.completed":
                self.call.status, self.call.error_class = 502, "upstream_" + kind[9:]
        elif kind == "error":
            self.complete = True
            self.call.status, self.call.error_class = 502, "upstream_stream_error"
        return frame(name or kind, data)

    def broken(self, message: str) -> bytes:
        return error_event(message, self.sequence)

    def settle(self) -> None:
        if self.call.completion_tokens == 0:
            self.call.completion_tokens = self.deltas  # ended early: the deltas so far
