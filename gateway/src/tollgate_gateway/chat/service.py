"""The proxy: authenticate, resolve the alias, admit under limits, forward, account.

Both the OpenAI API (to Ollama's ``/v1``) and Ollama's native API (``/api``) go
through `ProxyService.handle`, so keys, limits and usage are the same on both.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import aiohttp
import orjson

from tollgate_gateway import metrics
from tollgate_gateway.accesslog import AccessLog, operation
from tollgate_gateway.catalog.service import Alias, Catalog
from tollgate_gateway.chat.schemas import NATIVE, Endpoint, Parsed, parse, parse_json
from tollgate_gateway.errors import (
    ApiError,
    bad_request,
    error_body,
    error_class,
    invalid_key,
    limit_reason,
    missing_key,
    model_not_found,
    model_not_ready,
    upstream_error,
    upstream_failure,
)
from tollgate_gateway.keys.service import KeyRecord, KeyService
from tollgate_gateway.limits.estimate import NO_IMAGES, images_in, prompt_estimate
from tollgate_gateway.limits.service import (
    NOTHING,
    Admission,
    Ask,
    Limiter,
    nanos_per_token,
)
from tollgate_gateway.pools.service import PoolQueue
from tollgate_gateway.requestpolicy import EMPTY, Api, PolicyViolation
from tollgate_gateway.requestpolicy import apply as apply_policy
from tollgate_gateway.requestpolicy.core import OPTION_NAME
from tollgate_gateway.routing.model import Policy
from tollgate_gateway.routing.prefix import chat_prefix, generate_prefix
from tollgate_gateway.routing.service import Route, Router, no_replica
from tollgate_gateway.storage.outage import UNAVAILABLE
from tollgate_gateway.storage.upstream import Upstream, UpstreamError, UpstreamResponse, read_body
from tollgate_gateway.tracing import RequestTrace, Tracing, now_ns
from tollgate_gateway.usage.writer import UsageRow, UsageWriter, copy_line

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
REVOKED = {
    "message": "The API key was revoked or disabled while this response was streaming.",
    "type": "invalid_request_error",
    "code": "invalid_api_key",
}
DONE = b"data: [DONE]\n\n"
SERVER_ERROR_EVENT = {
    "error": {
        "message": "The server had an error processing your request.",
        "type": "server_error",
        "param": None,
        "code": "internal_error",
    }
}
WHOLE = {
    Endpoint.EMBEDDINGS,
    Endpoint.OLLAMA_EMBED,
    Endpoint.OLLAMA_EMBEDDINGS,
    Endpoint.OLLAMA_SHOW,
}
# The request policy's view of each endpoint (none: nothing in it a policy governs; Ollama's
# OpenAI embeddings and /api/show take no options).
POLICY_APIS = {
    Endpoint.CHAT: Api.OPENAI,
    Endpoint.COMPLETIONS: Api.OPENAI,
    Endpoint.OLLAMA_CHAT: Api.NATIVE,
    Endpoint.OLLAMA_GENERATE: Api.NATIVE,
    Endpoint.OLLAMA_EMBED: Api.NATIVE_EMBED,
    Endpoint.OLLAMA_EMBEDDINGS: Api.NATIVE_EMBED,
    Endpoint.RESPONSES: Api.RESPONSES,
    Endpoint.MESSAGES: Api.MESSAGES,
}
# Raw response headers, as Starlette's Response/StreamingResponse would have written them.
JSON_TYPE = (b"content-type", b"application/json")
SSE_HEADERS = [
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
    (b"content-type", b"text/event-stream; charset=utf-8"),
]
NDJSON_HEADERS = [
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
    (b"content-type", b"application/x-ndjson"),
]


@dataclass(slots=True)
class Reply:
    """A response as raw ASGI parts: whole (`body`) or streamed (`stream`). `after`, when
    set, is called once the whole body has been handed to the server (or could not be).
    `settle`, for a whole body, is called before it is sent: its settlement then leaves with
    the other Redis commands of the event-loop turn, before the answer does."""

    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes = b""
    stream: AsyncGenerator[bytes, None] | None = None
    after: Callable[[], None] | None = None
    settle: Callable[[], None] | None = None


def _then(first: Callable[[], None] | None, second: Callable[[], None]) -> Callable[[], None]:
    if first is None:
        return second

    def both() -> None:
        try:
            first()
        finally:
            second()

    return both


def _raw(headers: dict[str, str]) -> list[tuple[bytes, bytes]]:
    return [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]


def json_reply(content: bytes, status: int = 200, headers: dict[str, str] | None = None) -> Reply:
    raw = _raw(headers) if headers else []
    raw.append((b"content-length", str(len(content)).encode()))
    raw.append(JSON_TYPE)
    return Reply(status, raw, content)


# Endpoints whose streams are server-sent events: told early, with comments, that they wait.
SSE_ENDPOINTS = {Endpoint.CHAT, Endpoint.COMPLETIONS, Endpoint.RESPONSES, Endpoint.MESSAGES}
QUEUED_COMMENT = b": queued\n\n"


def stream_error(endpoint: Endpoint, err: ApiError) -> bytes:
    """An error as the last event of a stream that had begun (each API's own shape)."""
    if endpoint is Endpoint.MESSAGES:
        kind = "overloaded_error" if err.status in (503, 529) else "api_error"
        data = {"type": "error", "error": {"type": kind, "message": err.message}}
        return b"event: error\ndata: " + orjson.dumps(data) + b"\n\n"
    if endpoint is Endpoint.RESPONSES:
        event: dict[str, Any] = {"type": "error", "code": err.code, "message": err.message}
        event["param"] = None
        return b"event: error\ndata: " + orjson.dumps(event) + b"\n\n"
    error = {"message": err.message, "type": err.type, "param": err.param, "code": err.code}
    return b"data: " + orjson.dumps({"error": error}) + b"\n\n"


def _close(forward: Awaitable[Reply]) -> None:
    close = getattr(forward, "close", None)
    if close is not None:
        close()


def error_reply(path: str, err: ApiError) -> Reply:
    """What `errors.error_response` sends, as a Reply."""
    body = error_body(path, err.status, err.message, err.type, err.code, err.param)
    return json_reply(body, err.status, err.headers)


# What `/api/show` may tell a key about its alias: how to talk to the model, not where or
# what the backend is (blob paths, the backend's tag and name, tensor layout).
SHOW_KEYS = ("license", "parameters", "template", "details", "model_info", "capabilities")
SHOW_GENERAL = {
    "general.architecture",
    "general.file_type",
    "general.parameter_count",
    "general.quantization_version",
}


def redact_show(data: Any, alias: Alias) -> dict[str, Any]:
    if not isinstance(data, dict):
        return {}
    shown: dict[str, Any] = {k: data[k] for k in SHOW_KEYS if k in data}
    modelfile = data.get("modelfile")
    if isinstance(modelfile, str):
        kept = [
            line
            for line in modelfile.splitlines()
            if not line.startswith(("#", "FROM ", "ADAPTER ")) and line.strip()
        ]
        shown["modelfile"] = "\n".join([f"FROM {alias.alias}", *kept]) + "\n"
    details = shown.get("details")
    if isinstance(details, dict):
        shown["details"] = {**details, "parent_model": ""}
    info = shown.get("model_info")
    if isinstance(info, dict):
        shown["model_info"] = {
            k: v
            for k, v in info.items()
            if (not k.startswith("general.") or k in SHOW_GENERAL)
            and not (isinstance(v, str) and ("/" in v or alias.backend_tag in v))
        }
    if isinstance(data.get("modified_at"), str):
        shown["modified_at"] = data["modified_at"]
    return shown


def upstream_json(payload: bytes) -> Any:
    """A whole upstream answer parsed, or the 502 every endpoint gives for an unreadable one."""
    try:
        return orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        metrics.UPSTREAM_ERRORS.labels("protocol").inc()
        raise ApiError(
            502,
            "The model server sent an unreadable response.",
            type="server_error",
            code="upstream_error",
        ) from exc


def new_id() -> str:
    """`new_id()`, the same 32 hex digits with version and variant bits, at a
    third of the cost (a request needs two)."""
    n = int.from_bytes(os.urandom(16), "big")
    n = (n & ~(0xC000 << 48)) | 0x8000 << 48  # RFC 4122 variant
    n = (n & ~(0xF000 << 64)) | 4 << 76  # version 4
    return f"{n:032x}"


def _conform_choices(data: dict[str, Any], endpoint: Endpoint) -> None:
    """What OpenAI's schema requires and Ollama leaves out: every choice has `logprobs`
    and every chat message `refusal` (both null here)."""
    for choice in data.get("choices") or ():
        choice.setdefault("logprobs", None)
        message = choice.get("message")
        if endpoint is Endpoint.CHAT and isinstance(message, dict):
            message.setdefault("refusal", None)


def _int_or_none(value: Any) -> int | None:
    return value if isinstance(value, int) else None


def request_prefix(body: dict[str, Any], max_chars: int) -> bytes | None:
    """The part of a request body that decides prompt-cache affinity (any API's shape)."""
    messages = body.get("messages")
    if isinstance(messages, list):  # chat (OpenAI, Ollama), Anthropic Messages
        return chat_prefix(messages, max_chars, body.get("system"))
    items = body.get("input")
    if isinstance(items, list):  # Responses
        return chat_prefix(items, max_chars, body.get("instructions"))
    if "prompt" in body:  # completions, generate
        return generate_prefix(body.get("prompt"), max_chars, body.get("system"))
    return None


def constrain(endpoint: Endpoint, alias: Alias, parsed: Parsed) -> None:
    """The alias's request policy applied to the body in place, before admission: a capped
    or defaulted output bound is also what admission reserves. A request over a limit in
    mode ``reject`` gets a 400 naming the field (in the API's own error shape)."""
    policy = alias.request_policy
    if policy is EMPTY:
        return
    api = POLICY_APIS.get(endpoint)
    if api is None:
        return
    try:
        applied = apply_policy(policy, api, parsed.body)
    except PolicyViolation as exc:
        raise bad_request(str(exc), param=exc.param, code="request_policy_violation") from exc
    if applied.output_tokens is not None:
        parsed.max_tokens = applied.output_tokens
    if applied.clamped or applied.dropped_options:
        # option names are the client's: only plain ones are echoed (in a response header)
        dropped = {
            f"options.{o}" if OPTION_NAME.fullmatch(o) else "options.*"
            for o in applied.dropped_options[:16]
        }
        parsed.clamped = applied.clamped + sorted(dropped)


def bearer_key(authorization: str | None) -> str | None:
    if not authorization:
        return None
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


@dataclass(slots=True, eq=False)  # hashed by identity: held in sets while streaming
class Call:
    """One proxied request, from admission to its usage row."""

    request_id: str
    endpoint: Endpoint
    key: KeyRecord
    alias: Alias
    parsed: Parsed
    admission: Admission
    prompt_estimate: int = 0
    started: float = field(default_factory=time.perf_counter)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    ttft: float | None = None
    status: int = 200
    error_class: str | None = None
    finished: bool = False
    revoked: bool = False  # the key was revoked or disabled while the response streamed
    resp: UpstreamResponse | None = None
    trace: RequestTrace | None = None  # only when tracing is on
    route: Route | None = None  # the replica chosen, when the alias has several
    load_ns: int | None = None  # the response's load_duration (native API)

    @property
    def replica_url(self) -> str:
        return self.alias.backend_url if self.route is None else self.route.url

    def first_token(self) -> None:
        """The first token reached the client: time to first token, and the trace's event."""
        if self.ttft is None:
            self.ttft = time.perf_counter() - self.started
            if self.trace is not None:
                self.trace.first_token()


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
        prompt_bytes_per_token: float = 2.0,
        durable_usage: bool = False,
        access_log: AccessLog | None = None,
        tracing: Tracing | None = None,
        router: Router | None = None,
        pools: PoolQueue | None = None,
        queue_keepalive: float = 10.0,
        prompt_tokens_per_image: int = 2048,
    ) -> None:
        self.keys = keys
        self.router = router
        self.pools = pools
        self.queue_keepalive = queue_keepalive
        self.catalog = catalog
        self.limiter = limiter
        self.upstream = upstream
        self.usage = usage
        self._default_max_tokens = default_max_tokens
        self._per_key = metrics_per_key
        self._durable = durable_usage
        self._bytes_per_token = prompt_bytes_per_token
        self._tokens_per_image = prompt_tokens_per_image
        self._metric_children: dict[tuple[Any, tuple[str, ...]], Any] = {}
        self.access_log = access_log or AccessLog(enabled=False, sample=0, json_lines=False)
        self.tracing = tracing or Tracing(None, 1.0)
        # Streams in progress by key digest, so a revocation can end them.
        self._open: dict[str, set[Call]] = {}
        self._rechecks: set[asyncio.Task[None]] = set()
        keys.on_change = self._key_changed

    # -- shared steps ------------------------------------------------------------------
    async def authenticate(
        self, authorization: str | None, trace: RequestTrace | None = None
    ) -> KeyRecord:
        return await self.authenticate_key(bearer_key(authorization), trace)

    async def authenticate_key(
        self, key: str | None, trace: RequestTrace | None = None
    ) -> KeyRecord:
        """The key's record; 401 ApiErrors when it is missing or not valid. A traced request
        gets its `authenticate` step."""
        begun = now_ns() if trace is not None else 0
        if key is None:
            metrics.AUTH_FAILURES.inc()
            raise missing_key()
        record = await self.keys.authenticate(key)
        if record is None:
            metrics.AUTH_FAILURES.inc()
            raise invalid_key()
        if trace is not None:
            trace.step("authenticate", begun, now_ns(), **{"tollgate.key.id": str(record.id)})
        return record

    async def resolve(self, key: KeyRecord, name: str) -> Alias:
        alias = await self.catalog.get(name)
        if alias is None or not key.may_use(name):
            raise model_not_found(name)
        if not alias.enabled:
            if alias.pending:
                raise model_not_ready(name)
            raise model_not_found(name)
        return alias

    def _ask(
        self, endpoint: Endpoint, key: KeyRecord, alias: Alias, parsed: Parsed, prompt: int
    ) -> Ask:
        """What admission reserves for this request (keys with a TPM limit or a budget)."""
        if key.tpm_limit is None and key.monthly_budget is None:
            return NOTHING
        if endpoint in WHOLE:  # embeddings: a prompt and no answer
            output, least = 0, 0
        else:
            output, least = parsed.max_tokens or self._default_max_tokens, 1
        if key.monthly_budget is None or not alias.priced:
            return Ask(prompt, output, least)
        return Ask(
            prompt,
            output,
            least,
            nanos_per_token(alias.input_price_per_mtok),
            nanos_per_token(alias.output_price_per_mtok),
        )

    def prompt_estimate(self, raw: bytes, body: Any, carried: Any = None) -> int:
        """The prompt tokens a request is reserved (see `limits.estimate`): its body's bytes
        and images, and those of what it carries."""
        size = len(raw)
        images = images_in(body) if b"image" in raw else NO_IMAGES
        if carried is not None:
            extra = orjson.dumps(carried)
            size += len(extra)
            if b"image" in extra:
                images += images_in(carried)
        return prompt_estimate(size, self._bytes_per_token, images, self._tokens_per_image)

    async def admit(
        self,
        endpoint: Endpoint,
        key: KeyRecord,
        alias: Alias,
        parsed: Parsed,
        raw: bytes,
        request_id: str,
        trace: RequestTrace | None = None,
        carried: Any = None,
    ) -> tuple[Admission, int]:
        """Admit one request under the key's limits (429 ApiErrors are counted); returns the
        admission and the prompt estimate (billed when the client leaves before the model
        server counted the prompt). `carried`: what the model server gets besides the body
        (a stored conversation continued). A traced request gets its `admission` step."""
        begun = now_ns() if trace is not None else 0
        estimate = 0
        if endpoint is not Endpoint.OLLAMA_SHOW:
            estimate = self.prompt_estimate(raw, parsed.body, carried)
        ask = self._ask(endpoint, key, alias, parsed, estimate) if key.limited else NOTHING
        # The pool slot is asked for now: its script rides in the admission's (or, when the
        # admission does not go to Redis, leaves on its own at once).
        hold = None
        if self.pools is not None and endpoint is not Endpoint.OLLAMA_SHOW:
            hold = self.pools.begin(alias, key, carried=True)
        try:
            rider = None if hold is None else hold.rider
            if hold is not None:
                hold.rider = None  # (it refers to the hold: no reference cycle left behind)
            admission = await self.limiter.admit(key, request_id, ask, rider)
        except BaseException as exc:
            if hold is not None:
                assert self.pools is not None
                self.pools.release(hold)
            reason = limit_reason(exc) if isinstance(exc, ApiError) else None
            if reason is not None:
                metrics.LIMIT_REFUSALS.labels(reason).inc()
            raise
        admission.hold = hold
        if trace is not None:
            trace.step("admission", begun, now_ns(), **{"tollgate.limited": key.limited})
        return admission, estimate

    async def handle(
        self,
        endpoint: Endpoint,
        raw: bytes,
        authorization: str | None,
        request_id: str,
        trace: RequestTrace | None = None,
    ) -> Reply:
        started = time.perf_counter()
        key: KeyRecord | None = None
        model: str | None = None
        try:
            key = await self.authenticate(authorization, trace)
            parsed = parse(endpoint, parse_json(raw))
            model = parsed.model
            alias = await self.resolve(key, parsed.model)
            constrain(endpoint, alias, parsed)
            admission, estimate = await self.admit(
                endpoint, key, alias, parsed, raw, request_id, trace
            )
        except ApiError as exc:
            self.refused(endpoint, request_id, exc, key, model, started, trace)
            raise
        except Exception as exc:
            # The database away where memory cannot answer (503), or a bug of ours (500):
            # counted here, answered (and logged) by the caller.
            status, klass = (
                (503, "service_unavailable")
                if isinstance(exc, UNAVAILABLE)
                else (500, "server_error")
            )
            self._child(metrics.REQUESTS, "", endpoint.value, str(status), klass).inc()
            raise
        call = Call(request_id, endpoint, key, alias, parsed, admission, estimate)
        call.trace = trace
        return await self.serve(call, self._forward(call))

    async def serve(
        self,
        call: Call,
        forward: Awaitable[Reply],
        on_error: Callable[[ApiError], None] | None = None,
    ) -> Reply:
        """Await an admitted call's reply; every way it can fail is recorded once (usage
        row, metrics, settlement). Shared by every API's path. A stream of server-sent
        events that waits for a pool slot longer than ``queue_keepalive`` seconds starts at
        once and is sent a comment every ``queue_keepalive`` seconds while it waits."""
        patience = None
        if (
            call.admission.hold is not None
            and self.queue_keepalive > 0
            and call.parsed.stream
            and call.endpoint in SSE_ENDPOINTS
        ):
            patience = self.queue_keepalive
        reply = await self._serve(call, forward, on_error, patience)
        if reply is None:
            return Reply(
                200,
                [*SSE_HEADERS, *_raw(call.admission.headers)],
                stream=self._queued_stream(call, forward, on_error),
                after=functools.partial(self._left_queue, call, forward),
            )
        return reply

    async def _serve(
        self,
        call: Call,
        forward: Awaitable[Reply],
        on_error: Callable[[ApiError], None] | None,
        patience: float | None = None,
    ) -> Reply | None:
        """`serve`, and None when the call still waits for its pool after ``patience``."""
        forwarded = later = False
        try:
            try:
                if call.admission.hold is not None and not await self._queued(call, patience):
                    later = True
                    return None  # still waiting: `forward` is awaited later
                forwarded = True
                response = await forward
            except UpstreamError as failure:  # the adapter's own error, told as ours
                raise upstream_failure(failure) from failure
            finally:
                if not later:
                    _close(forward)  # not awaited when the queue refused it or the client left
        except ApiError as exc:
            if on_error is not None:
                on_error(exc)  # an API's own status for an error (Anthropic's 529)
            call.status, call.error_class = exc.status, exc.code or exc.type
            self.finish(call)
            exc.headers = {**call.admission.headers, **exc.headers}
            raise
        except asyncio.CancelledError:  # the client left while we waited for the model
            call.status, call.error_class = 499, "client_disconnected"
            if forwarded:  # a request that left the queue never reached the model server
                call.prompt_tokens = call.prompt_tokens or call.prompt_estimate
            self.finish(call)
            raise
        except Exception:
            # A bug of ours, not the client's doing: recorded as such (the caller answers 500
            # and logs it once, with the request id).
            call.status, call.error_class = 500, "server_error"
            self.finish(call)
            raise
        if call.admission.headers:
            response.headers.extend(_raw(call.admission.headers))
        hold = call.admission.hold
        if hold is not None:
            response.headers.append((b"x-tollgate-queue-ms", b"%d" % round(hold.queued_ms)))
        if call.parsed.clamped:  # the client learns why its answer is shorter than asked
            response.headers.append((b"x-tollgate-clamped", ",".join(call.parsed.clamped).encode()))
        return response

    async def _queued(self, call: Call, patience: float | None = None) -> bool:
        """Wait for a slot of the call's pool (False: still waiting after ``patience``); a
        call that waited reads its alias again (a pool held at zero has replicas now)."""
        assert self.pools is not None
        hold = call.admission.hold
        try:
            if not await self.pools.wait(hold, call.alias, patience):
                return False
        except ApiError as exc:
            exc.headers = {**exc.headers, "x-tollgate-queue-ms": str(round(hold.queued_ms))}
            raise
        if hold.waited:
            fresh = await self.catalog.get(call.alias.alias)
            if fresh is not None:
                call.alias = fresh
        return True

    async def _queued_stream(
        self,
        call: Call,
        forward: Awaitable[Reply],
        on_error: Callable[[ApiError], None] | None,
    ) -> AsyncGenerator[bytes, None]:
        """A stream begun while its request waits for a slot: comments until it has one,
        then the answer's own events (or the refusal as the API's error event)."""
        inner: AsyncGenerator[bytes, None] | None = None
        try:
            yield QUEUED_COMMENT
            while True:
                try:
                    reply = await self._serve(call, forward, on_error, self.queue_keepalive)
                except ApiError as exc:  # recorded by _serve
                    yield stream_error(call.endpoint, exc)
                    return
                if reply is not None:
                    break
                yield QUEUED_COMMENT
            waited = b": queued %d ms\n\n" % round(call.admission.hold.queued_ms)
            if reply.stream is None:  # a whole answer (settled before it leaves)
                if reply.settle is not None:
                    reply.settle()
                try:
                    yield waited + reply.body
                finally:
                    if reply.after is not None:
                        reply.after()
                return
            inner = reply.stream
            async for chunk in inner:
                yield waited + chunk
                waited = b""
        finally:
            if inner is not None:
                await inner.aclose()  # it settles itself (once it has started)
            self._left_queue(call, forward)

    def _left_queue(self, call: Call, forward: Awaitable[Reply]) -> None:
        """The client of a queued stream left (or the stream ended): accounted once."""
        _close(forward)
        if not call.finished:
            call.status, call.error_class = 499, "client_disconnected"
            self.finish(call)

    def traced(self, call: Call) -> dict[str, str] | None:
        """The inference span of a traced call, started now; its context to send upstream."""
        if call.trace is None:
            return None
        return call.trace.start_upstream(
            operation(call.endpoint.value), call.alias.backend_tag, call.alias.backend_url
        )

    async def send_upstream(
        self,
        call: Call,
        path: str,
        body: dict[str, Any],
        carrier: dict[str, str] | None = None,
    ) -> UpstreamResponse:
        """POST ``body`` to the alias's backend: its one URL, or the replica the router
        chooses (retried on another before any byte of an answer, see routing/)."""
        alias = call.alias
        if alias.replicas is None:  # one backend: the path of old, nothing to choose
            return await self.upstream.request(
                "POST", alias.backend_url + path, orjson.dumps(body), carrier
            )
        if self.router is None or not alias.replicas:
            raise no_replica(alias.alias)
        prefix = None
        config = alias.routing
        if config.policy is Policy.MODEL_AWARE and config.prefix_chars:
            prefix = request_prefix(body, config.prefix_chars)
        resp, call.route = await self.router.send(alias, path, orjson.dumps(body), prefix, carrier)
        return resp

    async def _forward(self, call: Call) -> Reply:
        body = call.parsed.body
        body["model"] = call.alias.backend_tag
        cap = call.admission.cap
        if cap is not None and call.endpoint not in WHOLE:
            # Reserved for exactly this many output tokens: the model may not produce more.
            if call.endpoint in NATIVE:
                options = body.get("options")
                body["options"] = {**(options or {}), "num_predict": cap}
            else:
                body["max_tokens"] = cap
                body.pop("max_completion_tokens", None)
        elif call.endpoint is Endpoint.CHAT and call.parsed.max_tokens is not None:
            # Ollama reads only max_tokens; newer OpenAI clients send max_completion_tokens.
            body["max_tokens"] = call.parsed.max_tokens
            body.pop("max_completion_tokens", None)
        if call.parsed.stream and call.endpoint in (Endpoint.CHAT, Endpoint.COMPLETIONS):
            body["stream_options"] = {"include_usage": True}
        elif call.endpoint in (Endpoint.OLLAMA_CHAT, Endpoint.OLLAMA_GENERATE):
            body["stream"] = call.parsed.stream
        resp = await self.send_upstream(
            call, UPSTREAM_PATHS[call.endpoint], body, self.traced(call)
        )
        if resp.status != 200 or not call.parsed.stream or call.endpoint in WHOLE:
            try:
                payload = await read_body(resp)
            except BaseException:
                resp.close()  # cancelled (the client left): the model server stops too
                raise
            resp.release()
            if resp.status != 200:
                raise upstream_error(resp.status, payload, call.alias.alias)
            reply = json_reply(self._rewrite_whole(call, payload))
            reply.settle = functools.partial(self.settle_whole, call, reply)
            return reply
        if call.endpoint in NATIVE:
            reply = Reply(200, list(NDJSON_HEADERS), stream=self._ndjson(call, resp))
        else:
            reply = Reply(200, list(SSE_HEADERS), stream=self._sse(call, resp))
        # A stream that never started (the response could not even begin) ends here.
        reply.after = functools.partial(self._abandon, call, resp)
        return reply

    def _abandon(self, call: Call, resp: UpstreamResponse) -> None:
        if not call.finished:
            resp.close()
            call.status, call.error_class = 499, "client_disconnected"
            call.prompt_tokens = call.prompt_estimate
            self.finish(call)

    # -- whole responses ---------------------------------------------------------------
    def _rewrite_whole(self, call: Call, payload: bytes) -> bytes:
        data = upstream_json(payload)
        if call.endpoint is Endpoint.OLLAMA_SHOW:
            return orjson.dumps(redact_show(data, call.alias))
        data["model"] = call.alias.alias
        if call.endpoint in NATIVE:
            call.prompt_tokens = int(data.get("prompt_eval_count") or 0)
            call.completion_tokens = int(data.get("eval_count") or 0)
            if call.route is not None:
                call.load_ns = _int_or_none(data.get("load_duration"))
        else:
            usage = data.get("usage") or {}
            call.prompt_tokens = int(usage.get("prompt_tokens") or 0)
            call.completion_tokens = int(usage.get("completion_tokens") or 0)
            if call.endpoint in ID_PREFIX:
                data["id"] = ID_PREFIX[call.endpoint] + new_id()
                _conform_choices(data, call.endpoint)
                data["usage"] = {
                    "prompt_tokens": call.prompt_tokens,
                    "completion_tokens": call.completion_tokens,
                    "total_tokens": call.prompt_tokens + call.completion_tokens,
                }
        return orjson.dumps(data)

    # -- streams -----------------------------------------------------------------------
    # Each read from the upstream is answered with one write to the client: the events it
    # completed, rewritten, together (a token is one read; the last token, the usage chunk
    # and [DONE] usually arrive in one). The bytes are those of one write per event.
    @staticmethod
    def _split(pending: bytes, chunk: bytes) -> tuple[list[bytes], bytes]:
        """Complete non-blank lines so far, and the incomplete rest."""
        pending += chunk
        if b"\n" not in chunk:
            return [], pending
        *lines, rest = pending.split(b"\n")
        return [line for line in lines if line.strip()], rest

    async def _sse(self, call: Call, resp: UpstreamResponse) -> AsyncGenerator[bytes, None]:
        stream_id = ID_PREFIX[call.endpoint] + new_id()
        alias = call.alias.alias
        include_usage = call.parsed.include_usage
        chunks = 0
        done = False
        out: list[bytes] = []
        self.hold_stream(call, resp)
        try:
            pending = b""
            reads = resp.iter_any()
            while not done:
                try:
                    chunk = await reads.__anext__()
                except StopAsyncIteration:
                    lines = [pending] if pending.strip() else []
                    if not lines:
                        break
                    pending = b""
                else:
                    lines, pending = self._split(pending, chunk)
                    if not lines:
                        continue
                for line in lines:
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
                        out.append(b"data: " + data + b"\n\n")
                        yield b"".join(out)
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
                        for choice in event.get("choices") or ():
                            choice.setdefault("logprobs", None)
                        call.first_token()
                        if include_usage:
                            event["usage"] = None
                    out.append(b"data: " + orjson.dumps(event) + b"\n\n")
                if done:
                    out.append(DONE)
                if out:
                    batch = b"".join(out)
                    out.clear()
                    yield batch
            if not done:
                raise aiohttp.ClientPayloadError("stream ended without [DONE]")
        except (aiohttp.ClientError, TimeoutError, orjson.JSONDecodeError):
            if call.revoked:
                call.status, call.error_class = 401, "key_revoked"
                error = {"error": {**REVOKED, "param": None}}
            else:
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
            out.append(b"data: " + orjson.dumps(error) + b"\n\n")  # after the good events
            yield b"".join(out)
        except (GeneratorExit, asyncio.CancelledError):
            call.status, call.error_class = 499, "client_disconnected"
            raise
        except Exception:
            log.exception("unhandled error in the stream of %s", call.request_id)
            call.status, call.error_class = 500, "server_error"
            out.append(b"data: " + orjson.dumps(SERVER_ERROR_EVENT) + b"\n\n")
            yield b"".join(out)
        finally:
            if not done:  # disconnected before the usage chunk: the prompt and the answer so far
                call.prompt_tokens = call.prompt_tokens or call.prompt_estimate
            if call.completion_tokens == 0:
                call.completion_tokens = chunks
            self.release_stream(call)
            self._close_upstream(resp, done)
            self.finish(call)

    async def _ndjson(self, call: Call, resp: UpstreamResponse) -> AsyncGenerator[bytes, None]:
        alias = call.alias.alias
        chunks = 0
        done = False
        out: list[bytes] = []
        self.hold_stream(call, resp)
        try:
            pending = b""
            reads = resp.iter_any()
            while True:
                try:
                    chunk = await reads.__anext__()
                except StopAsyncIteration:
                    lines = [pending] if pending.strip() else []
                    if not lines:
                        break
                    pending = b""
                else:
                    lines, pending = self._split(pending, chunk)
                    if not lines:
                        continue
                for line in lines:
                    event = orjson.loads(line)
                    if "error" in event:
                        call.status, call.error_class = 502, "upstream_stream_error"
                        metrics.UPSTREAM_ERRORS.labels("stream").inc()
                        out.append(line + b"\n")
                        yield b"".join(out)
                        return
                    event["model"] = alias
                    call.first_token()
                    if event.get("done"):
                        done = True
                        call.prompt_tokens = int(event.get("prompt_eval_count") or 0)
                        call.completion_tokens = int(event.get("eval_count") or 0)
                        if call.route is not None:
                            call.load_ns = _int_or_none(event.get("load_duration"))
                    else:
                        chunks += 1
                    out.append(orjson.dumps(event) + b"\n")
                if out:
                    batch = b"".join(out)
                    out.clear()
                    yield batch
            if not done:
                raise aiohttp.ClientPayloadError("stream ended before done")
        except (aiohttp.ClientError, TimeoutError, orjson.JSONDecodeError):
            if call.revoked:
                call.status, call.error_class = 401, "key_revoked"
                out.append(orjson.dumps({"error": REVOKED["message"]}) + b"\n")
            else:
                call.status, call.error_class = 502, "upstream_stream_error"
                metrics.UPSTREAM_ERRORS.labels("stream").inc()
                out.append(b'{"error":"the model server connection broke mid-stream"}\n')
            yield b"".join(out)
        except (GeneratorExit, asyncio.CancelledError):
            call.status, call.error_class = 499, "client_disconnected"
            raise
        except Exception:
            log.exception("unhandled error in the stream of %s", call.request_id)
            call.status, call.error_class = 500, "server_error"
            out.append(b'{"error":"the server had an error processing your request"}\n')
            yield b"".join(out)
        finally:
            if not done:  # disconnected before the last chunk: the prompt and the answer so far
                call.prompt_tokens = call.prompt_tokens or call.prompt_estimate
                call.completion_tokens = chunks
            self.release_stream(call)
            self._close_upstream(resp, done)
            self.finish(call)

    # -- revocation of streams in progress ------------------------------------------------
    def hold_stream(self, call: Call, resp: UpstreamResponse) -> None:
        call.resp = resp
        self._open.setdefault(call.key.key_hash, set()).add(call)

    def release_stream(self, call: Call) -> None:
        held = self._open.get(call.key.key_hash)
        if held is not None:
            held.discard(call)
            if not held:
                del self._open[call.key.key_hash]

    def _key_changed(self, digest: str | None) -> None:
        """A key changed (None: maybe any): look again at those with streams open."""
        targets = list(self._open) if digest is None else [digest] if digest in self._open else []
        for target in targets:
            task = asyncio.get_running_loop().create_task(self._recheck(target))
            self._rechecks.add(task)
            task.add_done_callback(self._rechecks.discard)

    async def _recheck(self, digest: str) -> None:
        try:
            record = await self.keys.fresh(digest)
        except Exception as exc:  # the database is away: the streams go on
            log.warning("could not recheck a key with open streams: %s", exc)
            return
        if record is not None and record.usable():
            return
        for call in list(self._open.get(digest, ())):
            # Closing the upstream ends the stream's read at once; the stream then sends
            # the revocation error event and settles.
            call.revoked = True
            if call.resp is not None:
                call.resp.close()

    @staticmethod
    def _close_upstream(resp: UpstreamResponse, complete: bool) -> None:
        if complete:
            resp.release()
        else:
            resp.close()  # closing the connection tells Ollama to stop generating

    # -- accounting --------------------------------------------------------------------
    def settle_whole(self, call: Call, reply: Reply) -> None:
        """`Reply.settle` of a whole answer: usage and limits settled before it leaves (in
        this loop turn's Redis write), metrics and the access line once it has left."""
        reply.settle = None  # it held the reply: no reference cycle left for the collector
        self.finish(call, batched=True, reply=reply)

    def finish(self, call: Call, batched: bool = False, reply: Reply | None = None) -> None:
        """Record usage, metrics and settle limits; safe to call from a cancelled stream.
        `batched`: the settlement may wait for the end of this event-loop turn (the caller
        yields once before answering, see `Reply.settle`); otherwise it is written at once.
        With the whole `reply` about to leave, its metrics and access line wait for its
        `after` (the same loop turn, once the answer is written)."""
        if call.finished:
            return
        call.finished = True
        if call.route is not None and self.router is not None:
            self.router.release(call.route, call.load_ns)
        rider = None  # the pool slot's release, to ride in the settlement's script
        if call.admission.hold is not None and self.pools is not None:
            rider = self.pools.release(call.admission.hold, carried=True)
        elapsed = time.perf_counter() - call.started
        alias = call.alias
        cost = alias.cost(call.prompt_tokens, call.completion_tokens)
        account = functools.partial(self._account, call, elapsed, cost)
        if reply is None:
            account()
        else:
            reply.after = _then(reply.after, account)
        row = UsageRow(
            ts=datetime.now(UTC),
            request_id=call.request_id,
            key_id=call.key.id,
            app=call.key.app,
            alias=alias.alias,
            backend_tag=alias.backend_tag,
            endpoint=call.endpoint.value,
            status=call.status,
            prompt_tokens=call.prompt_tokens,
            completion_tokens=call.completion_tokens,
            cost=cost,
            latency_ms=elapsed * 1000,
            ttft_ms=call.ttft * 1000 if call.ttft is not None else None,
            streamed=call.parsed.stream,
            error_class=call.error_class,
        )
        tokens = call.prompt_tokens + call.completion_tokens
        if self._durable:  # the row goes to Redis with the settlement, else to the buffer
            lost = functools.partial(self.usage.record, row)
            self.limiter.settle(
                call.admission, tokens, cost, copy_line(row), lost, not batched, rider
            )
            return
        self.usage.record(row)
        if call.admission.tracked or call.key.tpm_limit or call.key.monthly_budget is not None:
            self.limiter.settle(call.admission, tokens, cost, rider=rider)
        elif rider is not None:
            rider.alone()

    def _account(self, call: Call, elapsed: float, cost: Decimal) -> None:
        """A finished call's metrics, trace and access line."""
        alias = call.alias
        endpoint = call.endpoint.value
        name = alias.alias
        child = self._child
        child(metrics.REQUESTS, name, endpoint, str(call.status), call.error_class or "").inc()
        child(metrics.LATENCY, name, endpoint).observe(elapsed)
        if call.ttft is not None:
            child(metrics.TTFT, name, endpoint).observe(call.ttft)
        if call.prompt_tokens:
            child(metrics.TOKENS, name, "input").inc(call.prompt_tokens)
        if call.completion_tokens:
            child(metrics.TOKENS, name, "output").inc(call.completion_tokens)
        if cost:
            child(metrics.COST, name).inc(float(cost))
        if self._per_key:
            metrics.KEY_REQUESTS.labels(call.key.id_text, alias.alias).inc()
        self._genai(call, elapsed)
        if call.trace is not None:
            call.trace.finish(call.status, call.error_class, self._span_attributes(call))
        if self.access_log.wanted(call.status):
            self.access_log.write(
                {
                    "request_id": call.request_id,
                    "key_id": call.key.id_text,
                    "key_prefix": call.key.prefix,
                    "app": call.key.app,
                    "alias": name,
                    "backend_model": alias.backend_tag,
                    "replica": call.replica_url,
                    "endpoint": endpoint,
                    "status": call.status,
                    "error_class": call.error_class,
                    "latency_ms": round(elapsed * 1000, 3),
                    "ttft_ms": None if call.ttft is None else round(call.ttft * 1000, 3),
                    "prompt_tokens": call.prompt_tokens,
                    "completion_tokens": call.completion_tokens,
                    "streamed": call.parsed.stream,
                }
            )

    def refused(
        self,
        endpoint: Endpoint,
        request_id: str,
        exc: ApiError,
        key: KeyRecord | None,
        model: str | None,
        started: float,
        trace: RequestTrace | None = None,
    ) -> None:
        """Account for a request refused before it reached a backend: `tollgate_requests_total`,
        the trace, the access line and (when the key is known) a usage row with the status
        and the error class, and no tokens."""
        klass = error_class(exc)
        named = isinstance(model, str) and key is not None and exc.code != "model_not_found"
        # Only a model the key may use labels the metric: a client's made-up names do not.
        label = model if named and isinstance(model, str) else ""
        self._child(metrics.REQUESTS, label, endpoint.value, str(exc.status), klass).inc()
        if trace is not None:
            attributes = {"tollgate.request_id": request_id, "tollgate.alias": model}
            if key is not None:
                attributes["tollgate.key.id"] = str(key.id)
            trace.finish(exc.status, klass, attributes)
        elapsed_ms = (time.perf_counter() - started) * 1000
        if key is not None:  # never a row for requests without a valid key (no flooding)
            self.usage.record(
                UsageRow(
                    ts=datetime.now(UTC),
                    request_id=request_id,
                    key_id=key.id,
                    app=key.app,
                    alias=model[:200] if isinstance(model, str) else None,
                    backend_tag=None,
                    endpoint=endpoint.value,
                    status=exc.status,
                    prompt_tokens=0,
                    completion_tokens=0,
                    cost=Decimal(0),
                    latency_ms=elapsed_ms,
                    ttft_ms=None,
                    streamed=False,
                    error_class=klass,
                )
            )
        if not self.access_log.wanted(exc.status):
            return
        self.access_log.write(
            {
                "request_id": request_id,
                "key_id": None if key is None else str(key.id),
                "key_prefix": None if key is None else key.prefix,
                "app": None if key is None else key.app,
                "alias": model if isinstance(model, str) else None,
                "backend_model": None,
                "replica": None,
                "endpoint": endpoint.value,
                "status": exc.status,
                "error_class": klass,
                "latency_ms": round(elapsed_ms, 3),
                "ttft_ms": None,
                "prompt_tokens": 0,
                "completion_tokens": 0,
                "streamed": False,
            }
        )

    @staticmethod
    def _span_attributes(call: Call) -> dict[str, Any]:
        """GenAI and Tollgate attributes of a request's spans: ids, never a key or prompt."""
        return {
            "gen_ai.operation.name": operation(call.endpoint.value),
            "gen_ai.provider.name": "ollama",
            "gen_ai.request.model": call.alias.backend_tag,
            "gen_ai.response.model": call.alias.backend_tag,
            "gen_ai.usage.input_tokens": call.prompt_tokens,
            "gen_ai.usage.output_tokens": call.completion_tokens,
            "gen_ai.request.max_tokens": call.parsed.max_tokens,
            "tollgate.request_id": call.request_id,
            "tollgate.key.id": str(call.key.id),
            "tollgate.app": call.key.app,
            "tollgate.alias": call.alias.alias,
            "tollgate.endpoint": call.endpoint.value,
            "tollgate.replica": call.replica_url,
            "tollgate.streamed": call.parsed.stream,
            "tollgate.ttft_ms": None if call.ttft is None else round(call.ttft * 1000, 3),
        }

    def _genai(self, call: Call, elapsed: float) -> None:
        """The OpenTelemetry GenAI metrics of one request."""
        endpoint = call.endpoint.value
        base = (operation(endpoint), "ollama", call.alias.alias, call.alias.backend_tag)
        child = self._child
        error = "" if call.status < 400 else (call.error_class or str(call.status))
        child(metrics.GENAI_REQUEST_DURATION, *base, error).observe(elapsed)
        if call.status >= 400:
            return
        if call.prompt_tokens:
            child(metrics.GENAI_TOKEN_USAGE, *base, "input").observe(call.prompt_tokens)
        if call.completion_tokens:
            child(metrics.GENAI_TOKEN_USAGE, *base, "output").observe(call.completion_tokens)
        if call.ttft is not None:
            child(metrics.GENAI_TTFT, *base).observe(call.ttft)
            if call.completion_tokens > 1:
                per_token = (elapsed - call.ttft) / (call.completion_tokens - 1)
                child(metrics.GENAI_TPOT, *base).observe(per_token)

    def _child(self, metric: Any, *labels: str) -> Any:
        """`metric.labels(*labels)`, remembered: labels() takes a lock and several lookups,
        and a request needs up to six of them."""
        found = self._metric_children.get((metric, labels))
        if found is None:
            if len(self._metric_children) >= 10_000:
                self._metric_children.clear()
            found = self._metric_children[(metric, labels)] = metric.labels(*labels)
        return found

    async def drain(self) -> None:
        """Wait for pending settlements (shutdown)."""
        await self.limiter.drain()
