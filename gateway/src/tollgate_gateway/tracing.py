"""OpenTelemetry traces of proxied requests; off unless an OTLP endpoint is configured.

One trace per request: a SERVER span for the request (``POST /v1/chat/completions``) with
children for authentication, admission (limits) and the call to Ollama — a CLIENT span
named ``{gen_ai.operation.name} {gen_ai.request.model}`` as the GenAI conventions name
inference spans, with a ``gen_ai.first_token`` event and the model's token usage. A client's
W3C ``traceparent`` is honoured, and ours is passed to Ollama. Spans carry ids (request, key,
app, alias, pool replica), never a key or prompt text.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping
from typing import Any

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.trace import Span, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from tollgate_gateway import __version__

log = logging.getLogger(__name__)
PROPAGATOR = TraceContextTextMapPropagator()


class RequestTrace:
    """The spans of one request; every method is cheap and never raises into the proxy."""

    __slots__ = ("_tracer", "context", "done", "root", "upstream")

    def __init__(self, tracer: trace.Tracer, root: Span) -> None:
        self._tracer = tracer
        self.root = root
        self.context: Context = trace.set_span_in_context(root)
        self.upstream: Span | None = None
        self.done = False

    def step(self, name: str, start_ns: int, end_ns: int, **attributes: Any) -> None:
        """A finished child span (authentication, admission), from its measured times."""
        span = self._tracer.start_span(name, context=self.context, start_time=start_ns)
        for key, value in attributes.items():
            if value is not None:
                span.set_attribute(key, value)
        span.end(end_time=end_ns)

    def start_upstream(self, operation: str, model: str, replica: str) -> dict[str, str]:
        """Open the inference span; returns the headers that carry it to Ollama."""
        span = self._tracer.start_span(
            f"{operation} {model}", context=self.context, kind=SpanKind.CLIENT
        )
        span.set_attribute("gen_ai.operation.name", operation)
        span.set_attribute("gen_ai.provider.name", "ollama")
        span.set_attribute("gen_ai.request.model", model)
        span.set_attribute("server.address", replica)
        self.upstream = span
        carrier: dict[str, str] = {}
        PROPAGATOR.inject(carrier, context=trace.set_span_in_context(span))
        return carrier

    def first_token(self) -> None:
        if self.upstream is not None:
            self.upstream.add_event("gen_ai.first_token")

    def finish(self, status: int, error: str | None, attributes: Mapping[str, Any]) -> None:
        if self.done:
            return
        self.done = True
        for span in (self.upstream, self.root):
            if span is None:
                continue
            for key, value in attributes.items():
                if value is not None:
                    span.set_attribute(key, value)
            if status >= 400:  # a refusal is no server error, but it says what went wrong
                span.set_attribute("error.type", error or str(status))
            if status >= 500 or (span is self.upstream and status >= 400):
                span.set_status(Status(StatusCode.ERROR, error or str(status)))
        if self.upstream is not None:
            self.upstream.end()
        self.root.set_attribute("http.response.status_code", status)
        self.root.end()


class Tracing:
    def __init__(
        self,
        endpoint: str | None,
        sample_ratio: float,
        service_name: str = "tollgate-gateway",
    ) -> None:
        self.enabled = bool(endpoint)
        self._provider: TracerProvider | None = None
        self._tracer: trace.Tracer | None = None
        if not endpoint:
            return
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        resource = Resource.create({"service.name": service_name, "service.version": __version__})
        self._provider = TracerProvider(
            resource=resource, sampler=ParentBased(TraceIdRatioBased(sample_ratio))
        )
        url = endpoint.rstrip("/")
        if not url.endswith("/v1/traces"):
            url += "/v1/traces"
        self._provider.add_span_processor(
            BatchSpanProcessor(OTLPSpanExporter(endpoint=url), schedule_delay_millis=500)
        )
        self._tracer = self._provider.get_tracer("tollgate_gateway", __version__)
        log.info("tracing on: OTLP to %s, sampling %.3g", url, sample_ratio)

    def start(
        self,
        method: str,
        path: str,
        headers: Iterable[tuple[bytes, bytes]],
        request_id: str,
        route: str | None = None,
    ) -> RequestTrace | None:
        """The SERVER span of a request, named ``{method} {route}`` (the path when the route
        has no parameters); None when tracing is off or the request is not sampled."""
        if self._tracer is None:
            return None
        carrier: dict[str, str] = {}
        for name, value in headers:
            if name in (b"traceparent", b"tracestate"):
                carrier[name.decode()] = value.decode("latin-1")
        parent = PROPAGATOR.extract(carrier) if carrier else None
        attributes = {
            "http.request.method": method,
            "url.path": path,
            "tollgate.request_id": request_id,
        }
        if route is not None:
            attributes["http.route"] = route
        root = self._tracer.start_span(
            f"{method} {route or path}", context=parent, kind=SpanKind.SERVER, attributes=attributes
        )
        if not root.is_recording():
            return None
        return RequestTrace(self._tracer, root)

    def shutdown(self) -> None:
        if self._provider is not None:
            self._provider.shutdown()


def now_ns() -> int:
    return time.time_ns()
