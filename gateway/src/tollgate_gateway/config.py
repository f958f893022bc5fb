"""Typed settings, read from the environment.

The well-known variables (POSTGRES_DSN, REDIS_URL, OLLAMA_BASE_URL, ADMIN_EMAIL,
ADMIN_PASSWORD, JWT_SECRET) keep their plain names; Tollgate's own settings are
prefixed with TOLLGATE_.
"""

from __future__ import annotations

import tempfile
from enum import StrEnum
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from tollgate_schema.dsn import to_libpq_dsn, to_sqlalchemy_dsn
from tollgate_schema.keys import MIN_PEPPER_LENGTH

WEAK_SECRETS = frozenset({"", "changeme", "change-me", "secret", "admin", "password", "tollgate"})


class RedisFailurePolicy(StrEnum):
    """What the gateway does with limited keys while Redis cannot be reached."""

    OPEN = "open"  # admit requests; limits are not enforced until Redis is back
    CLOSED = "closed"  # refuse requests of keys that have limits with 503 + Retry-After


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TOLLGATE_", extra="ignore")

    postgres_dsn: str = Field(
        "postgresql://postgres@127.0.0.1:5432/tollgate",
        validation_alias=AliasChoices("POSTGRES_DSN", "TOLLGATE_POSTGRES_DSN"),
    )
    redis_url: str = Field(
        "redis://127.0.0.1:6379/0", validation_alias=AliasChoices("REDIS_URL", "TOLLGATE_REDIS_URL")
    )
    ollama_base_url: str = Field(
        "http://127.0.0.1:11434",
        validation_alias=AliasChoices("OLLAMA_BASE_URL", "TOLLGATE_OLLAMA_BASE_URL"),
    )
    admin_email: str | None = Field(None, validation_alias=AliasChoices("ADMIN_EMAIL"))
    admin_password: SecretStr | None = Field(None, validation_alias=AliasChoices("ADMIN_PASSWORD"))
    jwt_secret: SecretStr = Field(SecretStr(""), validation_alias=AliasChoices("JWT_SECRET"))
    jwt_ttl_seconds: int = 12 * 3600

    dev_mode: bool = False
    host: str = "127.0.0.1"
    port: int = 8000
    workers: int = 1
    log_json: bool = False
    log_level: str = "info"

    # Logins: attempts per client address and failures per email in a fixed window
    # (Redis, shared by replicas); argon2 on `login_hash_workers` threads, `login_hash_queue`
    # more waiting at most; the admin API's own database pool.
    login_window_seconds: int = 60
    login_attempts_per_address: int = 30
    login_failures_per_email: int = 10
    login_hash_workers: int = 2
    login_hash_queue: int = 8
    admin_db_pool_size: int = 5
    admin_db_pool_timeout_seconds: float = 10.0

    # Postgres outages: keys and aliases already known are served from memory this long
    # after the first failure; the hot path's pool waits and connection attempts are bounded.
    db_outage_grace_seconds: float = Field(300.0, ge=0)
    db_pool_timeout_seconds: float = 5.0
    db_connect_timeout_seconds: float = 3.0

    key_pepper: SecretStr = SecretStr("")
    key_cache_ttl_seconds: float = 60.0
    key_cache_max_entries: int = 100_000

    max_body_bytes: int = 8 * 1024 * 1024
    # The HTTP server's limits (see `server`): request head size and field count, seconds to
    # send a head and between two reads of a body, keep-alive idle seconds, open connections
    # per worker process.
    max_header_bytes: int = Field(64 * 1024, ge=1024)
    max_headers: int = Field(100, ge=1)
    header_timeout_seconds: float = Field(10.0, gt=0)
    body_timeout_seconds: float = Field(30.0, gt=0)
    keep_alive_timeout_seconds: float = Field(65.0, gt=0)
    max_connections: int = Field(2048, ge=1)
    upstream_connect_timeout_seconds: float = 5.0
    upstream_read_timeout_seconds: float = 600.0
    upstream_max_connections: int = 1000
    # Aliases with several replicas (README "Routing"): how often each replica's /api/ps and
    # /api/tags are read, and the attempts a request may make when replicas fail before
    # answering (the total time for them capped).
    routing_poll_seconds: float = Field(2.0, gt=0)
    routing_attempts: int = Field(3, ge=1, le=10)
    routing_retry_seconds: float = Field(10.0, gt=0)
    # Consecutive failures that eject a replica, and its first backoff (doubling to 30 s).
    routing_eject_failures: int = Field(3, ge=1)
    routing_eject_seconds: float = Field(1.0, gt=0, le=30)
    # Pools with `slots` (README "When a pool is full"): how long a request may wait for a
    # slot (an alias's routing `max_wait_seconds` overrides it), how many may wait per pool and
    # model (`max_queue`), what a flow of the fair queue is (each key, or each app), the
    # lease of a slot in Redis (renewed while held: a gateway that dies frees its slots), and
    # how often waiting requests and demand are refreshed.
    queue_max_wait_seconds: float = Field(30.0, gt=0)
    queue_max_waiting: int = Field(1000, ge=0)
    queue_fairness: Literal["key", "app"] = "key"
    queue_lease_seconds: float = Field(15.0, gt=1)
    queue_poll_seconds: float = Field(1.0, gt=0, le=5)
    # A server-sent-events stream that waits longer than this starts and gets a comment line
    # this often until it has its slot (0: never; it then starts once it has one).
    queue_keepalive_seconds: float = Field(10.0, ge=0)

    default_max_tokens: int = 4096
    # Prompt tokens reserved per byte of request body for keys with a TPM limit or budget.
    prompt_bytes_per_token: float = Field(2.0, gt=0)
    # Prompt tokens reserved per image in a request (its data is not counted as bytes).
    prompt_tokens_per_image: int = Field(2048, ge=0)
    concurrency_lease_seconds: float = 15.0
    redis_timeout_seconds: float = 0.5
    redis_failure_policy: RedisFailurePolicy = RedisFailurePolicy.OPEN

    usage_batch_size: int = 500
    usage_flush_interval_seconds: float = 0.5
    usage_max_buffer: int = 200_000
    # resolved when settings are read, not at import (a read-only root may lack /tmp)
    usage_spool_dir: Path = Field(
        default_factory=lambda: Path(tempfile.gettempdir()) / "tollgate-usage-spool"
    )
    # Usage rows go to a Redis stream with the settlement (durable from then on) and the
    # writers drain it; off, they wait in the process's buffer until written.
    usage_via_redis: bool = True
    # The Redis stream the usage rows go through. Gateways that share a Redis but write to
    # different databases (two installations, a test bed) need different names.
    usage_stream: str = Field("tg:usage", min_length=1, max_length=200)
    usage_reclaim_seconds: float = Field(30.0, gt=0)

    metrics_per_key: bool = False
    # The console's static export; unset: gateway/console/out next to the source.
    console_dir: Path | None = None

    # Stored responses (/v1/responses with store): kept this long, then swept.
    responses_retention_seconds: float = 30 * 86400
    responses_sweep_interval_seconds: float = 3600.0
    audit_retention_days: int = Field(365, ge=1)
    access_log: bool = True
    otlp_endpoint: str | None = Field(
        None,
        validation_alias=AliasChoices(
            "TOLLGATE_OTLP_ENDPOINT",
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            "OTEL_EXPORTER_OTLP_ENDPOINT",
        ),
    )
    trace_sample_ratio: float = Field(1.0, ge=0.0, le=1.0)
    otel_service_name: str = Field(
        "tollgate-gateway",
        validation_alias=AliasChoices("OTEL_SERVICE_NAME", "TOLLGATE_OTEL_SERVICE_NAME"),
    )
    access_log_sample: float = Field(1.0, ge=0.0, le=1.0)
    # /metrics is served on this port only (0: not at all), on metrics_host (default: host).
    metrics_port: int = 9090
    metrics_host: str | None = None

    @property
    def sqlalchemy_dsn(self) -> str:
        return to_sqlalchemy_dsn(self.postgres_dsn)

    @property
    def psycopg_dsn(self) -> str:
        return to_libpq_dsn(self.postgres_dsn)

    def insecure_reasons(self) -> list[str]:
        """Why these settings are unfit outside dev mode (empty when fine)."""
        reasons = []
        jwt = self.jwt_secret.get_secret_value()
        if jwt.lower() in WEAK_SECRETS or len(jwt) < 32:
            reasons.append("JWT_SECRET is empty, a default, or shorter than 32 characters")
        if len(self.key_pepper.get_secret_value()) < MIN_PEPPER_LENGTH:
            reasons.append(
                f"TOLLGATE_KEY_PEPPER is empty or shorter than {MIN_PEPPER_LENGTH} characters "
                "(the operator must have the same one)"
            )
        if self.admin_password is not None:
            pw = self.admin_password.get_secret_value()
            if pw.lower() in WEAK_SECRETS or len(pw) < 12:
                reasons.append("ADMIN_PASSWORD is a default or shorter than 12 characters")
        return reasons


@lru_cache
def get_settings() -> Settings:
    return Settings()
