"""Prometheus metrics. Names are documented in the README.

Served on a port of their own (TOLLGATE_METRICS_PORT), never on the serving port: they name
every alias with its traffic and cost, and tenants reach the serving port. With several
worker processes set PROMETHEUS_MULTIPROC_DIR; /metrics then aggregates every worker
(prometheus-client's multiprocess mode), served once, by the supervising process
(see `exposition`).
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
FAST_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)

REQUESTS = Counter(
    "tollgate_requests_total",
    "Every answered proxy request by model alias, endpoint, HTTP status and error class "
    "(empty on success; 429s by limit: requests, tokens, concurrency, budget). The alias is "
    "empty when the request never named a model the key may use (401, 404, 400 bodies).",
    ["alias", "endpoint", "status", "error_class"],
)
KEY_REQUESTS = Counter(
    "tollgate_key_requests_total",
    "Requests per key (only with TOLLGATE_METRICS_PER_KEY).",
    ["key", "alias"],
)
LATENCY = Histogram(
    "tollgate_request_duration_seconds",
    "Time from request to the last byte of the response.",
    ["alias", "endpoint"],
    buckets=LATENCY_BUCKETS,
)
TTFT = Histogram(
    "tollgate_time_to_first_token_seconds",
    "Time from request to the first streamed token.",
    ["alias", "endpoint"],
    buckets=LATENCY_BUCKETS,
)
TOKENS = Counter(
    "tollgate_tokens_total",
    "Tokens by model alias and direction (input or output).",
    ["alias", "direction"],
)
COST = Counter("tollgate_cost_total", "Cost charged, in the alias price currency.", ["alias"])
IN_FLIGHT = Gauge(
    "tollgate_in_flight_requests", "Requests being served now.", multiprocess_mode="livesum"
)
LIMIT_REFUSALS = Counter(
    "tollgate_limit_refusals_total",
    "Requests refused by a limit, by reason (requests, tokens, concurrency, budget).",
    ["reason"],
)
UPSTREAM_ERRORS = Counter(
    "tollgate_upstream_errors_total",
    "Upstream (Ollama) failures by class (connect, timeout, overloaded, http_5xx, stream).",
    ["error_class"],
)
CONNECTIONS_REFUSED = Counter(
    "tollgate_http_connections_refused_total",
    "Connections the HTTP server closed or refused, by reason (header_too_large, "
    "too_many_headers, header_timeout, body_timeout, max_connections).",
    ["reason"],
)
AUTH_FAILURES = Counter("tollgate_auth_failures_total", "Requests refused for a bad key.")
USAGE_QUEUE = Gauge(
    "tollgate_usage_queue_depth", "Usage events waiting to be written.", multiprocess_mode="livesum"
)
USAGE_FLUSH_SECONDS = Histogram(
    "tollgate_usage_flush_duration_seconds",
    "Time to write one batch of usage events.",
    buckets=FAST_BUCKETS,
)
USAGE_WRITTEN = Counter("tollgate_usage_events_written_total", "Usage events written.")
USAGE_FLUSH_ERRORS = Counter("tollgate_usage_flush_errors_total", "Failed usage batch writes.")
USAGE_DROPPED = Counter(
    "tollgate_usage_events_dropped_total",
    "Usage events dropped: the buffer was full, or Postgres refused the row as data.",
)
REDIS_LATENCY = Histogram(
    "tollgate_redis_duration_seconds",
    "Latency of Redis limit operations.",
    ["op"],
    buckets=FAST_BUCKETS,
)
REDIS_UP = Gauge("tollgate_redis_up", "1 while Redis answers.", multiprocess_mode="min")
REDIS_BREAKER_OPEN = Gauge(
    "tollgate_redis_breaker_open",
    "1 while the Redis circuit breaker is open (limits are not asked of Redis).",
    multiprocess_mode="max",
)
LIMITS_UNCHECKED = Counter(
    "tollgate_limits_unchecked_total",
    "Requests of limited keys served (open policy) or refused (closed) without Redis.",
)
DB_UP = Gauge("tollgate_db_up", "1 while Postgres answers the hot path.", multiprocess_mode="min")
DB_LATENCY = Histogram(
    "tollgate_db_duration_seconds",
    "Latency of Postgres operations.",
    ["op"],
    buckets=FAST_BUCKETS,
)


# -- Routing over a pool's replicas (what Ollama itself does not expose)
REPLICA_IN_FLIGHT = Gauge(
    "tollgate_replica_in_flight_requests",
    "Requests this gateway has in flight on a replica, by model.",
    ["pool", "replica", "model"],
    multiprocess_mode="livesum",
)
REPLICA_UP = Gauge(
    "tollgate_replica_up",
    "1 for each replica that may take traffic, 0 while it is ejected.",
    ["pool", "replica"],
    multiprocess_mode="max",
)
REPLICA_MODEL_LOADED = Gauge(
    "tollgate_replica_model_loaded",
    "1 for each model a replica holds in memory (its /api/ps).",
    ["pool", "replica", "model"],
    multiprocess_mode="max",
)
MODEL_LOADS = Counter(
    "tollgate_model_loads_total",
    "Model loads observed on a replica (from /api/ps and responses' load_duration).",
    ["pool", "replica", "model"],
)
MODEL_LOAD_SECONDS = Counter(
    "tollgate_model_load_seconds_total",
    "Time replicas spent loading models, from responses' load_duration.",
    ["pool", "replica", "model"],
)
ROUTING_DECISIONS = Counter(
    "tollgate_routing_decisions_total",
    "Replica choices by reason (loaded, prefix, least_load, cold, round_robin).",
    ["pool", "replica", "reason"],
)
ROUTING_RETRIES = Counter(
    "tollgate_routing_retries_total",
    "Attempts sent to another replica after a failure before any byte reached the client, "
    "by failure (connect, reset_before_response, busy_503).",
    ["pool", "reason"],
)
REPLICA_EJECTIONS = Counter(
    "tollgate_replica_ejections_total",
    "Times a failing replica was taken out of rotation for a backoff.",
    ["pool", "replica"],
)

# -- OpenTelemetry GenAI semantic conventions, mapped to Prometheus the documented way:
# dots become underscores, a unit in seconds adds `_seconds`, an annotation unit
# (`{token}`) adds nothing; attribute names likewise (`gen_ai.request.model` →
# `gen_ai_request_model`). Buckets are the ones the conventions advise.
GENAI_TOKEN_BUCKETS = (1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304)
GENAI_DURATION_BUCKETS = (
    0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92,
)  # fmt: skip
GENAI_TTFT_BUCKETS = (
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
)  # fmt: skip
GENAI_TPOT_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5)
GENAI_LABELS = ["gen_ai_operation_name", "gen_ai_provider_name", "gen_ai_request_model",
                "gen_ai_response_model"]  # fmt: skip
GENAI_TOKEN_USAGE = Histogram(
    "gen_ai_client_token_usage",
    "gen_ai.client.token.usage: tokens per request, by gen_ai_token_type (input, output).",
    [*GENAI_LABELS, "gen_ai_token_type"],
    buckets=GENAI_TOKEN_BUCKETS,
)
GENAI_REQUEST_DURATION = Histogram(
    "gen_ai_server_request_duration_seconds",
    "gen_ai.server.request.duration: request to last byte; error_type set on failures.",
    [*GENAI_LABELS, "error_type"],
    buckets=GENAI_DURATION_BUCKETS,
)
GENAI_TTFT = Histogram(
    "gen_ai_server_time_to_first_token_seconds",
    "gen_ai.server.time_to_first_token: request to the first streamed token.",
    GENAI_LABELS,
    buckets=GENAI_TTFT_BUCKETS,
)
GENAI_TPOT = Histogram(
    "gen_ai_server_time_per_output_token_seconds",
    "gen_ai.server.time_per_output_token: streaming time per token after the first.",
    GENAI_LABELS,
    buckets=GENAI_TPOT_BUCKETS,
)
# -- pool queues (README "When a pool is full") ------------------------------------------------
POOL_WAITING = Gauge(
    "tollgate_pool_queue_waiting",
    "Requests waiting for a slot of a pool and model, across every gateway (as this gateway "
    "last read it).",
    ["pool", "model"],
    multiprocess_mode="max",
)
POOL_IN_FLIGHT = Gauge(
    "tollgate_pool_queue_in_flight",
    "Requests holding a slot of a pool and model, across every gateway (as last read).",
    ["pool", "model"],
    multiprocess_mode="max",
)
POOL_WAIT = Histogram(
    "tollgate_pool_queue_wait_seconds",
    "Time requests spent waiting for a pool slot (0 when one was free), refused ones too.",
    ["pool"],
    buckets=(0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
)
POOL_COLD_START_WAIT = Histogram(
    "tollgate_pool_cold_start_wait_seconds",
    "Time requests that found their pool at zero ready replicas waited (served or refused).",
    ["pool"],
    buckets=(0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800),
)
POOL_REJECTIONS = Counter(
    "tollgate_pool_queue_rejections_total",
    "Requests a pool queue refused (503 pool_busy) by reason: full, deadline, cold_start; "
    "unchecked counts those sent on unqueued because Redis could not be reached.",
    ["pool", "reason"],
)
KEY_POOL_WAITING = Gauge(
    "tollgate_key_pool_queue_waiting",
    "Requests of a key waiting for a pool slot here (only with TOLLGATE_METRICS_PER_KEY).",
    ["pool", "key"],
    multiprocess_mode="livesum",
)
KEY_POOL_REJECTIONS = Counter(
    "tollgate_key_pool_queue_rejections_total",
    "Requests of a key a pool queue refused (only with TOLLGATE_METRICS_PER_KEY).",
    ["pool", "key", "reason"],
)
