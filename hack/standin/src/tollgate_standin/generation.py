"""One generation, shared by ``/api/chat``, ``/api/generate`` and their ``/v1`` twins.

Order of events mirrors Ollama: wait for a slot (or 503), "load" the model, spend
``ttft_ms`` evaluating the prompt (no bytes sent yet), then emit tokens paced by
``tokens_per_second`` and a final chunk carrying the metrics.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

from aiohttp import web

from .catalog import ModelRecord
from .faults import Fault
from .scheduler import ServerBusy
from .state import STATE, StandinState
from .streaming import (
    ChunkWriter,
    PreStreamFailure,
    StreamEnded,
    drop_connection,
    pause,
    take_stream_fault,
)
from .textgen import Plan, ToolCall, Turn, plan_generation


@dataclass(frozen=True, slots=True)
class Failure:
    """An error answer decided before generating: status and Ollama's message."""

    status: int
    message: str


@dataclass(slots=True)
class GenRequest:
    """A validated generation request, independent of the API it came through."""

    record: ModelRecord
    model: str  # as the client spelled it; echoed back like Ollama does
    turns: list[Turn]
    keep_alive: float
    stream: bool
    options: dict[str, Any] = field(default_factory=dict)
    tools: list[dict[str, Any]] = field(default_factory=list)
    fmt: Any = None
    idle: str | None = None  # "load" when there is nothing to generate


@dataclass(slots=True)
class Metrics:
    """Ollama's timing fields, in nanoseconds, plus token counts."""

    total_duration: int
    load_duration: int
    prompt_eval_count: int
    prompt_eval_duration: int
    eval_count: int
    eval_duration: int

    def as_dict(self) -> dict[str, int]:
        return {
            "total_duration": self.total_duration,
            "load_duration": self.load_duration,
            "prompt_eval_count": self.prompt_eval_count,
            "prompt_eval_duration": self.prompt_eval_duration,
            "eval_count": self.eval_count,
            "eval_duration": self.eval_duration,
        }


@dataclass(slots=True)
class Clock:
    start: int = field(default_factory=time.perf_counter_ns)
    loaded: int = 0
    first: int = 0

    def metrics(self, plan: Plan) -> Metrics:
        end = time.perf_counter_ns()
        first = self.first or end
        return Metrics(
            total_duration=max(end - self.start, 1),
            load_duration=max(self.loaded - self.start, 1),
            prompt_eval_count=plan.prompt_tokens,
            prompt_eval_duration=max(first - self.loaded, 1),
            eval_count=plan.eval_count,
            eval_duration=max(end - first, 1),
        )


class Encoder(Protocol):
    """How one API spells chunks, final answers and errors."""

    content_type: str

    def piece(self, text: str, first: bool) -> bytes: ...

    def tool_calls(self, calls: list[ToolCall], first: bool) -> bytes: ...

    def done(self, plan: Plan, metrics: Metrics, first: bool) -> bytes: ...

    def midstream_error(self, message: str, first: bool) -> bytes: ...

    def whole(self, plan: Plan, metrics: Metrics) -> web.Response: ...

    def idle(self, reason: str) -> web.Response: ...

    def failure(self, status: int, message: str) -> web.Response: ...


async def serve_generation(
    request: web.Request, gen: GenRequest, encoder: Encoder
) -> web.StreamResponse:
    state = request.app[STATE]
    clock = Clock()
    num_ctx = state.num_ctx(gen.options)
    try:
        async with state.scheduler.slot(gen.record.key):
            await state.load(gen.record, gen.keep_alive, num_ctx)
            clock.loaded = time.perf_counter_ns()
            try:
                return await _produce(request, state, gen, encoder, clock)
            finally:
                state.loaded.touch(gen.record, gen.keep_alive, num_ctx)
    except ServerBusy as busy:
        return encoder.failure(503, str(busy))
    except PreStreamFailure as failure:
        return encoder.failure(failure.status, failure.message)
    except StreamEnded as ended:
        return ended.response
    except asyncio.CancelledError:
        state.stats.cancelled += 1
        raise


async def _produce(
    request: web.Request, state: StandinState, gen: GenRequest, encoder: Encoder, clock: Clock
) -> web.StreamResponse:
    if gen.idle is not None:
        return encoder.idle(gen.idle)
    plan = _plan(state, gen)
    fault = take_stream_fault(state, request)
    cache = state.prefill(gen.record.key, gen.turns)
    prefill = state.config.ttft_ms / 1000 + cache.seconds
    try:
        if gen.stream:
            response = await _stream(request, state, plan, encoder, clock, fault, prefill)
        else:
            response = await _whole(request, state, plan, encoder, clock, fault, prefill)
    except BaseException:
        cache.done(None)  # cut short: the slot keeps the prompt
        raise
    cache.done(plan.text)
    return response


def _plan(state: StandinState, gen: GenRequest) -> Plan:
    options = gen.options
    num_predict = options.get("num_predict")
    stop = options.get("stop")
    return plan_generation(
        gen.record.display,
        gen.turns,
        length=state.config.completion_tokens,
        num_predict=_as_int(num_predict),
        stop=[s for s in stop if isinstance(s, str)] if isinstance(stop, list) else (),
        fmt=gen.fmt,
        tools=gen.tools,
    )


def _as_int(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return int(value)


async def _stream(
    request: web.Request,
    state: StandinState,
    plan: Plan,
    encoder: Encoder,
    clock: Clock,
    fault: Fault | None,
    prefill: float,
) -> web.StreamResponse:
    interval = state.config.token_interval
    writer = ChunkWriter(
        request,
        state,
        encoder.content_type,
        paced=interval > 0,
        fault=fault,
        error_chunk=encoder.midstream_error,
        headers=getattr(encoder, "stream_headers", None),
    )
    await pause(prefill)
    clock.first = time.perf_counter_ns()
    if plan.tool_calls:
        await writer.send(encoder.tool_calls(plan.tool_calls, True))
    # Token n is due `n * interval` after the first, as a model server generates at a steady
    # rate: a sleep per token would add each timer's overshoot (about 5 % at 5 ms here).
    loop = asyncio.get_running_loop()
    first = loop.time()
    for index, piece in enumerate(plan.pieces):
        if index:
            await pause(first + index * interval - loop.time())
        await writer.send(encoder.piece(piece, index == 0))
    await writer.send(encoder.done(plan, clock.metrics(plan), writer.sent == 0))
    return await writer.finish()


async def _whole(
    request: web.Request,
    state: StandinState,
    plan: Plan,
    encoder: Encoder,
    clock: Clock,
    fault: Fault | None,
    prefill: float,
) -> web.StreamResponse:
    await pause(prefill)
    clock.first = time.perf_counter_ns()
    await pause(max(len(plan.pieces) - 1, 0) * state.config.token_interval)
    if fault is not None and fault.kind == "drop":
        return drop_connection(request)
    if fault is not None:
        return encoder.failure(500, fault.message)
    return encoder.whole(plan, clock.metrics(plan))
