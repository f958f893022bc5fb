"""OpenTelemetry spans of the operator's reconciles: one span per handler run, named
``reconcile <Kind>``, with the object's kind, namespace and name, the trigger and the result.
Off unless an OTLP endpoint is configured (the API's no-op tracer costs next to nothing)."""

from __future__ import annotations

import logging
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.sampling import TraceIdRatioBased

from tollgate_operator import __version__

log = logging.getLogger(__name__)
_provider: TracerProvider | None = None


def setup(endpoint: str | None, sample_ratio: float, service_name: str) -> None:
    """Export spans over OTLP/HTTP to ``endpoint`` (nothing when it is empty)."""
    global _provider
    if not endpoint or _provider is not None:
        return
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    url = endpoint.rstrip("/")
    if not url.endswith("/v1/traces"):
        url += "/v1/traces"
    provider = TracerProvider(
        resource=Resource.create({"service.name": service_name, "service.version": __version__}),
        sampler=TraceIdRatioBased(sample_ratio),
    )
    provider.add_span_processor(
        BatchSpanProcessor(OTLPSpanExporter(endpoint=url), schedule_delay_millis=500)
    )
    trace.set_tracer_provider(provider)
    _provider = provider
    log.info("tracing on: OTLP to %s", url)


def shutdown() -> None:
    if _provider is not None:
        _provider.shutdown()


def start_reconcile(kind: str, trigger: str, body: Any, retry: int) -> trace.Span:
    metadata = (body or {}).get("metadata") or {}
    attributes = {
        "tollgate.object.kind": kind,
        "k8s.namespace.name": metadata.get("namespace") or "",
        "tollgate.object.name": metadata.get("name") or "",
        "tollgate.reconcile.trigger": trigger,
        "tollgate.reconcile.retry": retry,
    }
    tracer = trace.get_tracer("tollgate_operator", __version__)
    return tracer.start_span(f"reconcile {kind}", attributes=attributes)
