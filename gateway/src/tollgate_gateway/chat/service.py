"""The proxy: authenticate, resolve the alias, admit under limits, forward, account.

Both the OpenAI API (to Ollama's ``/v1``) and Ollama's native API (``/api``) go
through `ProxyService.handle`, so keys, limits and usage are the same on both.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal

import aiohttp
import orjson
from starlette.responses import Response, StreamingResponse

from tollgate_gateway import metrics
from tollgate_gateway.catalog.service import Alias, Catalog
from tollgate_gateway.chat.schemas import NATIVE, Endpoint, Parsed, parse, parse_json
from tollgate_gateway.errors import ApiError, invalid_key, missing_key, model_not_found
from tollgate_gateway.keys.service import KeyRecord, KeyService
from tollgate_gateway.limits.service import Admission, Limiter
from tollgate_gateway.storage.upstream import Upstream, read_body, upstream_error
from tollgate_gateway.usage.writer import UsageRow, UsageWriter

log = logging.getLogger(__name__)

UPSTREAM_PATHS = {
    Endpoint.CHAT: "/v1/chat/completions",
    Endpoint.COMPLETIONS: "/v1/completions",
    Endpoint.EMBEDDINGS: "/v1/embeddings",
    Endpoint.OLLAMA_CHAT: "/api/chat",
    Endpoint.OLLAMA_GENERATE: "/api/generate",
    Endpoint.OLLAMA_EMBED: "/api/embed",
    Endpoint.OLLAMA_EMBEDDINGS: "/api/embeddings",
    Endpoint.OLLAMA_SHOW: "/api/show",
}
ID_PREFIX = {Endpoint.CHAT: "chatcmpl-", Endpoint.COMPLETIONS: "cmpl-"}
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
DONE = b"data: [DONE]\n\n"


def bearer_key(authorization: str | None) -> str | None:
    if not authorization:
        return None
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


@dataclass(slots=True)
class Call:
    """One proxied request, from admission to its usage row."""

    request_id: str
    endpoint: Endpoint
    key: KeyRecord
    alias: Alias
    parsed: Parsed
    admission: Admission
    started: float = field(default_factory=time.perf_counter)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    ttft: float | None = None
    status: int = 200
    error_class: str | None = None
    finished: bool = False


class ProxyService:
    def __init__(
        self,
        keys: KeyService,
        catalog: Catalog,
        limiter: Limiter,
        upstream: Upstream,
        usage: UsageWriter,
        default_max_tokens: int,
        metrics_per_key: bool,
    ) -> None:
        self.keys = keys
        self.catalog = catalog
        self.limiter = limiter
        self.upstream = upstream
        self.usage = usage
        self._default_max_tokens = default_max_tokens
        self._per_key = metrics_per_key
        self._background: set[asyncio.Task[None]] = set()

    # -- shared steps ------------------------------------------------------------------
    async def authenticate(self, authorization: str | None) -> KeyRecord:
        key = bearer_key(authorization)
        if key is None:
            metrics.AUTH_FAILURES.inc()
            raise missing_key()
        record = await self.keys.authenticate(key)
        if record is None:
            metrics.AUTH_FAILURES.inc()
            raise invalid_key()
        return record

    async def resolve(self, key: KeyRecord, name: str) -> Alias:
        alias = await self.catalog.get(name)
        if alias is None or not alias.enabled or not key.may_use(name):
            raise model_not_found(name)
        return alias

    def _reservation(self, key: KeyRecord, alias: Alias, parsed: Parsed, size: int) -> Decimal:
        if key.monthly_budget is None or not alias.priced:
            return Decimal(0)
        prompt_estimate = size // 3 + 16  # generous: fewer than 3 bytes per token is rare
        return alias.cost(prompt_estimate, parsed.max_tokens or self._default_max_tokens)

    async def handle(
        self, endpoint: Endpoint, raw: bytes, authorization: str | None, request_id: str
    ) -> Response:
        key = await self.authenticate(authorization)
        parsed = parse(endpoint, parse_json(raw))
        alias = await self.resolve(key, parsed.model)
        reservation = self._reservation(key, alias, parsed, len(raw))
        try:
            admission = await self.limiter.admit(key, request_id, reservation)
        except ApiError as exc:
            if exc.status == 429:
                metrics.LIMIT_REFUSALS.labels(exc.code or exc.type).inc()
            raise
        call = Call(request_id, endpoint, key, alias, parsed, admission)
        try:
            response = await self._forward(call)
        except ApiError as exc:
            call.status, call.error_class = exc.status, exc.code or exc.type
            self.finish(call)
            exc.headers = {**admission.headers, **exc.headers}
            raise
        except BaseException:
            call.status, call.error_class = 499, "cancelled"
            self.finish(call)
            raise
        response.headers.update(admission.headers)
        return response

    async def _forward(self, call: Call) -> Response:
        body = call.parsed.body
        body["model"] = call.alias.backend_tag
        if call.endpoint is Endpoint.CHAT and call.parsed.max_tokens is not None:
            # Ollama reads only max_tokens; newer OpenAI clients send max_completion_tokens.
            body["max_tokens"] = call.parsed.max_tokens
            body.pop("max_completion_tokens", None)
        if call.parsed.stream and call.endpoint in (Endpoint.CHAT, Endpoint.COMPLETIONS):
            body["stream_options"] = {"include_usage": True}
        elif call.endpoint in (Endpoint.OLLAMA_CHAT, Endpoint.OLLAMA_GENERATE):
            body["stream"] = call.parsed.stream
        url = call.alias.backend_url + UPSTREAM_PATHS[call.endpoint]
        resp = await self.upstream.request("POST", url, orjson.dumps(body))
        if resp.status != 200:
            payload = await read_body(resp)
            resp.release()
            raise upstream_error(resp.status, payload, call.alias.alias)
        if not call.parsed.stream or call.endpoint in (
            Endpoint.EMBEDDINGS,
            Endpoint.OLLAMA_EMBED,
            Endpoint.OLLAMA_EMBEDDINGS,
            Endpoint.OLLAMA_SHOW,
        ):
            payload = await read_body(resp)
            resp.release()
            content = self._rewrite_whole(call, payload)
            self.finish(call)
            return Response(content, 200, media_type="application/json")
        if call.endpoint in NATIVE:
            return StreamingResponse(
                self._ndjson(call, resp),
                200,
                media_type="application/x-ndjson",
                headers=SSE_HEADERS,
            )
        return StreamingResponse(
            self._sse(call, resp), 200, media_type="text/event-stream", headers=SSE_HEADERS
        )

    # -- whole responses ---------------------------------------------------------------
    def _rewrite_whole(self, call: Call, payload: bytes) -> bytes:
        try:
            data = orjson.loads(payload)
        except orjson.JSONDecodeError as exc:
            metrics.UPSTREAM_ERRORS.labels("protocol").inc()
            raise ApiError(
                502,
                "The model server sent an unreadable response.",
                type="server_error",
                code="upstream_error",
            ) from exc
        if call.endpoint is Endpoint.OLLAMA_SHOW:
            return payload
        data["model"] = call.alias.alias
        if call.endpoint in NATIVE:
            call.prompt_tokens = int(data.get("prompt_eval_count") or 0)
            call.completion_tokens = int(data.get("eval_count") or 0)
        else:
            usage = data.get("usage") or {}
            call.prompt_tokens = int(usage.get("prompt_tokens") or 0)
            call.completion_tokens = int(usage.get("completion_tokens") or 0)
            if call.endpoint in ID_PREFIX:
                data["id"] = ID_PREFIX[call.endpoint] + uuid.uuid4().hex
                data["usage"] = {
                    "prompt_tokens": call.prompt_tokens,
                    "completion_tokens": call.completion_tokens,
                    "total_tokens": call.prompt_tokens + call.completion_tokens,
                }
        return orjson.dumps(data)

    # -- streams -----------------------------------------------------------------------
    async def _lines(self, call: Call, resp: aiohttp.ClientResponse) -> AsyncIterator[bytes]:
        """Complete lines from the upstream, however the bytes were split."""
        pending = b""
        async for chunk in resp.content.iter_any():
            pending += chunk
            if b"\n" not in pending:
                continue
            *lines, pending = pending.split(b"\n")
            for line in lines:
                if line.strip():
                    yield line
        if pending.strip():
            yield pending

    async def _sse(self, call: Call, resp: aiohttp.ClientResponse) -> AsyncIterator[bytes]:
        stream_id = ID_PREFIX[call.endpoint] + uuid.uuid4().hex
        alias = call.alias.alias
        include_usage = call.parsed.include_usage
        chunks = 0
        done = False
        try:
            async for line in self._lines(call, resp):
                if not line.startswith(b"data:"):
                    continue
                data = line[5:].strip()
                if data == b"[DONE]":
                    done = True
                    break
                event = orjson.loads(data)
                if "error" in event:
                    call.status, call.error_class = 502, "upstream_stream_error"
                    metrics.UPSTREAM_ERRORS.labels("stream").inc()
                    yield b"data: " + data + b"\n\n"
                    return
                event["id"] = stream_id
                event["model"] = alias
                usage = event.get("usage")
                if usage and not event.get("choices"):
                    call.prompt_tokens = int(usage.get("prompt_tokens") or 0)
                    call.completion_tokens = int(usage.get("completion_tokens") or 0)
                    if not include_usage:
                        continue
                else:
                    chunks += 1
                    if call.ttft is None:
                        call.ttft = time.perf_counter() - call.started
                    if include_usage:
                        event["usage"] = None
                yield b"data: " + orjson.dumps(event) + b"\n\n"
            if done:
                yield DONE
            else:
                raise aiohttp.ClientPayloadError("stream ended without [DONE]")
        except (aiohttp.ClientError, TimeoutError, orjson.JSONDecodeError):
            call.status, call.error_class = 502, "upstream_stream_error"
            metrics.UPSTREAM_ERRORS.labels("stream").inc()
            error = {
                "error": {
                    "message": "The model server connection broke mid-stream.",
                    "type": "server_error",
                    "param": None,
                    "code": "upstream_error",
                }
            }
            yield b"data: " + orjson.dumps(error) + b"\n\n"
        except BaseException:
            call.status, call.error_class = 499, "client_disconnected"
            raise
        finally:
            if call.completion_tokens == 0:
                call.completion_tokens = chunks  # disconnected before the usage chunk: count so far
            self._close_upstream(resp, done)
            self.finish(call)

    async def _ndjson(self, call: Call, resp: aiohttp.ClientResponse) -> AsyncIterator[bytes]:
        alias = call.alias.alias
        chunks = 0
        done = False
        try:
            async for line in self._lines(call, resp):
                event = orjson.loads(line)
                if "error" in event:
                    call.status, call.error_class = 502, "upstream_stream_error"
                    metrics.UPSTREAM_ERRORS.labels("stream").inc()
                    yield line + b"\n"
                    return
                event["model"] = alias
                if call.ttft is None:
                    call.ttft = time.perf_counter() - call.started
                if event.get("done"):
                    done = True
                    call.prompt_tokens = int(event.get("prompt_eval_count") or 0)
                    call.completion_tokens = int(event.get("eval_count") or 0)
                else:
                    chunks += 1
                yield orjson.dumps(event) + b"\n"
            if not done:
                raise aiohttp.ClientPayloadError("stream ended before done")
        except (aiohttp.ClientError, TimeoutError, orjson.JSONDecodeError):
            call.status, call.error_class = 502, "upstream_stream_error"
            metrics.UPSTREAM_ERRORS.labels("stream").inc()
            yield b'{"error":"the model server connection broke mid-stream"}\n'
        except BaseException:
            call.status, call.error_class = 499, "client_disconnected"
            raise
        finally:
            if not done:
                call.completion_tokens = chunks
            self._close_upstream(resp, done)
            self.finish(call)

    @staticmethod
    def _close_upstream(resp: aiohttp.ClientResponse, complete: bool) -> None:
        if complete:
            resp.release()
        else:
            resp.close()  # closing the connection tells Ollama to stop generating

    # -- accounting --------------------------------------------------------------------
    def finish(self, call: Call) -> None:
        """Record usage, metrics and settle limits; safe to call from a cancelled stream."""
        if call.finished:
            return
        call.finished = True
        elapsed = time.perf_counter() - call.started
        alias = call.alias
        cost = alias.cost(call.prompt_tokens, call.completion_tokens)
        endpoint = call.endpoint.value
        metrics.REQUESTS.labels(alias.alias, endpoint, str(call.status)).inc()
        metrics.LATENCY.labels(alias.alias, endpoint).observe(elapsed)
        if call.ttft is not None:
            metrics.TTFT.labels(alias.alias, endpoint).observe(call.ttft)
        if call.prompt_tokens:
            metrics.TOKENS.labels(alias.alias, "input").inc(call.prompt_tokens)
        if call.completion_tokens:
            metrics.TOKENS.labels(alias.alias, "output").inc(call.completion_tokens)
        if cost:
            metrics.COST.labels(alias.alias).inc(float(cost))
        if self._per_key:
            metrics.KEY_REQUESTS.labels(str(call.key.id), alias.alias).inc()
        self.usage.record(
            UsageRow(
                ts=datetime.now(UTC),
                request_id=call.request_id,
                key_id=call.key.id,
                app=call.key.app,
                alias=alias.alias,
                backend_tag=alias.backend_tag,
                endpoint=endpoint,
                status=call.status,
                prompt_tokens=call.prompt_tokens,
                completion_tokens=call.completion_tokens,
                cost=cost,
                latency_ms=elapsed * 1000,
                ttft_ms=call.ttft * 1000 if call.ttft is not None else None,
                streamed=call.parsed.stream,
                error_class=call.error_class,
            )
        )
        if call.admission.tracked or call.key.tpm_limit or call.key.monthly_budget is not None:
            task = asyncio.get_running_loop().create_task(
                self.limiter.settle(
                    call.admission, call.prompt_tokens + call.completion_tokens, cost
                )
            )
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    async def drain(self) -> None:
        """Wait for pending settlements (shutdown)."""
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)
