"""Prometheus metrics of the operator (served by prometheus_client on TOLLGATE_METRICS_PORT)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram, start_http_server

RECONCILES = Counter(
    "tollgate_operator_reconciles_total",
    "Reconciles by kind, trigger and result (ok, retry, invalid, error, cancelled).",
    ["kind", "trigger", "result"],
)
RECONCILE_SECONDS = Histogram(
    "tollgate_operator_reconcile_duration_seconds",
    "Time spent in one reconcile.",
    ["kind"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
ERRORS = Counter(
    "tollgate_operator_errors_total",
    "Reconcile errors by kind and reason (PostgresUnavailable, PoolNotFound, ...).",
    ["kind", "reason"],
)
PULLS = Counter(
    "tollgate_operator_pulls_total",
    "Model pulls on pool replicas by result (success, failed, unreachable).",
    ["result"],
)
PULL_SECONDS = Histogram(
    "tollgate_operator_pull_duration_seconds",
    "Duration of successful pulls.",
    buckets=(1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600),
)
KEYS_MINTED = Counter(
    "tollgate_operator_keys_minted_total",
    "API keys generated, by reason (created, rotated, replaced).",
    ["reason"],
)
DRIFT_REPAIRS = Counter(
    "tollgate_operator_drift_repairs_total",
    "Objects found changed by hand and restored, by what (key_row, model_row, secret).",
    ["what"],
)
ORPHANS_RELEASED = Counter(
    "tollgate_operator_orphans_released_total",
    "Managed rows whose resource was gone for the orphan grace, released by kind (key: "
    "revoked, model: disabled).",
    ["kind"],
)
ORPHANS_WAITING = Gauge(
    "tollgate_operator_orphans_waiting",
    "Managed rows whose resource is missing, within the orphan grace, by kind.",
    ["kind"],
)
POOL_DESIRED_REPLICAS = Gauge(
    "tollgate_operator_pool_desired_replicas",
    "Replicas a pool should have: the autoscaler's decision, else spec.replicas (pool: "
    "namespace/name).",
    ["pool"],
)
POOL_REPLICAS = Gauge(
    "tollgate_operator_pool_replicas",
    "Replicas the pool's StatefulSet is set to (above desired while replicas drain).",
    ["pool"],
)
POOL_READY_REPLICAS = Gauge(
    "tollgate_operator_pool_ready_replicas", "Ready replicas of a pool.", ["pool"]
)
POOL_DEMAND = Gauge(
    "tollgate_operator_pool_demand",
    "Requests in flight plus queued for an autoscaled pool, summed over the gateways.",
    ["pool"],
)
SCALE_EVENTS = Counter(
    "tollgate_operator_scale_events_total",
    "Autoscaler changes by direction: up, drain (replicas leave rotation), down, and "
    "restored (the StatefulSet was scaled by someone else and set back).",
    ["pool", "direction"],
)
LEADER = Gauge("tollgate_operator_leader", "1 while this replica holds the leader Lease.")


def serve(port: int, host: str) -> None:
    if port:
        start_http_server(port, addr=host)
