"""Operator settings, read from the environment (one place, typed).

POSTGRES_DSN keeps its plain name (as in the gateway); everything else is TOLLGATE_*.
TOLLGATE_KEY_PEPPER must be the gateways' pepper, or keys the operator writes never match;
outside dev mode (TOLLGATE_DEV_MODE) the operator refuses to start without one.
"""

from __future__ import annotations

import os
import socket
from functools import lru_cache

from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from tollgate_schema.keys import MIN_PEPPER_LENGTH

BACKEND_URL_FIELDS = ("name", "namespace", "port", "cluster_ip")


def default_identity() -> str:
    """The Pod's name in a cluster (POD_NAME from the downward API), else host and pid."""
    return os.environ.get("POD_NAME") or f"{socket.gethostname()}-{os.getpid()}"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TOLLGATE_", extra="ignore")

    postgres_dsn: str = Field(
        "postgresql://postgres@127.0.0.1:5432/tollgate",
        validation_alias=AliasChoices("POSTGRES_DSN", "TOLLGATE_POSTGRES_DSN"),
    )
    postgres_connect_timeout_seconds: float = 5.0
    # How long to wait for Postgres at start before giving up (the Pod is restarted).
    startup_db_timeout_seconds: float = 60.0
    key_pepper: SecretStr = SecretStr("")
    # Traces of reconciles over OTLP/HTTP; off when unset.
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
        "tollgate-operator",
        validation_alias=AliasChoices("OTEL_SERVICE_NAME", "TOLLGATE_OTEL_SERVICE_NAME"),
    )
    # Local development only: allows running without a pepper.
    dev_mode: bool = False

    # What applications use: the Secret carries OPENAI_BASE_URL = <gateway_url>/v1.
    gateway_url: str = "http://tollgate-gateway.tollgate.svc.cluster.local:8000"
    # Where gateways reach a pool: its ClusterIP Service. Fields: {name} {namespace} {port}
    # {cluster_ip} (the Service's address, for setups without cluster DNS).
    backend_url_template: str = "http://{name}.{namespace}.svc.cluster.local:{port}"

    ollama_image: str = "docker.io/ollama/ollama:0.33.0"
    ollama_port: int = 11434
    # Registries pulled over plain HTTP (Ollama's `insecure`), comma-separated host[:port]
    # globs, e.g. "registry.internal:5000,127.0.0.1:*". Empty: TLS registries only.
    insecure_registries: str = ""
    ollama_connect_timeout_seconds: float = 3.0
    # A pull fails when Ollama sends nothing for this long (large layers stream steadily).
    ollama_read_timeout_seconds: float = 300.0
    # Pod security: Ollama runs as this non-root user with HOME on the models volume.
    ollama_uid: int = 1000
    # Images an OllamaPool's spec.image may name: comma-separated repositories, "*" globs
    # allowed ("registry.internal/*"); docker.io names are normalized ("ollama/ollama" is
    # "docker.io/ollama/ollama"). The repository of ollama_image is always allowed.
    allowed_images: str = "docker.io/ollama/ollama"
    # Whether a pool's env may read the namespace's Secrets / ConfigMaps (valueFrom).
    allow_env_from_secrets: bool = False
    allow_env_from_config_maps: bool = False

    # Every pool gets a NetworkPolicy admitting ingress on the Ollama port only from these
    # Pods: label selectors ("key=value,key=value") and their namespaces ("*": any; default
    # the operator's own). Turn it off only where the platform isolates pools otherwise.
    pool_network_policy: bool = True
    gateway_pod_selector: str = (
        "app.kubernetes.io/part-of=tollgate,app.kubernetes.io/component=gateway"
    )
    gateway_namespace: str = Field(
        default_factory=lambda: os.environ.get("POD_NAMESPACE", "default")
    )
    operator_pod_selector: str = (
        "app.kubernetes.io/part-of=tollgate,app.kubernetes.io/component=operator"
    )
    operator_namespace: str = Field(
        default_factory=lambda: os.environ.get("POD_NAMESPACE", "default")
    )

    # Timers: how often each object is re-checked for drift even without changes.
    apikey_resync_seconds: float = 60.0
    pool_resync_seconds: float = 30.0
    alias_resync_seconds: float = 30.0
    # While pulls run, status is patched at most this often.
    progress_interval_seconds: float = 1.0
    # Failed pulls are retried with a growing delay, up to this.
    pull_retry_max_seconds: float = 300.0
    # Grace period of the old key after a rotation, unless the ApiKey says otherwise.
    rotation_grace_seconds: int = 3600
    # Orphan sweep: a managed key or alias whose resource has been missing this long (as
    # seen by this operator process) is revoked / disabled; the sweep runs at start and
    # this often (0: never).
    orphan_grace_seconds: float = 900.0
    orphan_sweep_seconds: float = 60.0

    # Autoscaling (OllamaPool spec.autoscaling): the gateways publish each pool's demand in
    # this Redis / Valkey (the gateways' REDIS_URL). Unset: pools with spec.autoscaling keep
    # their current replicas and say why in their status.
    redis_url: str | None = Field(
        None, validation_alias=AliasChoices("TOLLGATE_REDIS_URL", "REDIS_URL")
    )
    # How often each autoscaled pool's demand is sampled (a waiting request wakes it at once).
    autoscale_interval_seconds: float = Field(2.0, gt=0)
    # A gateway's entry counts while it is younger than this (gateways write about every
    # second while busy; the entry of a gateway that died stops counting).
    demand_fresh_seconds: float = Field(15.0, gt=0)

    metrics_port: int = 9090  # 0: no metrics endpoint
    metrics_host: str = "0.0.0.0"
    liveness_endpoint: str = "http://0.0.0.0:8080/healthz"
    log_json: bool = False
    log_level: str = "info"

    # Leader election through a coordination.k8s.io Lease: with two replicas one works,
    # the other waits and takes over when the Lease is not renewed.
    leader_election: bool = True
    lease_name: str = "tollgate-operator"
    lease_namespace: str = Field(
        default_factory=lambda: os.environ.get("POD_NAMESPACE", "default"),
    )
    lease_duration_seconds: float = 15.0
    identity: str = Field(default_factory=default_identity)

    @field_validator("backend_url_template")
    @classmethod
    def _known_fields(cls, value: str) -> str:
        try:
            value.format(**dict.fromkeys(BACKEND_URL_FIELDS, "x"))
        except (KeyError, IndexError, ValueError) as exc:
            raise ValueError(
                f"backend_url_template may use only {{{'}, {'.join(BACKEND_URL_FIELDS)}}}: {exc}"
            ) from exc
        return value

    @field_validator("gateway_pod_selector", "operator_pod_selector")
    @classmethod
    def _selector(cls, value: str) -> str:
        parse_selector(value)
        return value

    def insecure_reasons(self) -> list[str]:
        """Why these settings are unfit outside dev mode (empty when fine)."""
        if len(self.key_pepper.get_secret_value()) < MIN_PEPPER_LENGTH:
            return [
                f"TOLLGATE_KEY_PEPPER is empty or shorter than {MIN_PEPPER_LENGTH} characters "
                "(it must be the gateways' pepper)"
            ]
        return []

    @property
    def pepper(self) -> bytes:
        return self.key_pepper.get_secret_value().encode()

    @property
    def openai_base_url(self) -> str:
        return self.gateway_url.rstrip("/") + "/v1"

    @property
    def insecure_registry_list(self) -> list[str]:
        return [p.strip() for p in self.insecure_registries.split(",") if p.strip()]

    @property
    def allowed_image_list(self) -> list[str]:
        return [p.strip() for p in self.allowed_images.split(",") if p.strip()]


def parse_selector(value: str) -> dict[str, str]:
    """ "key=value,key=value" as a dict; at least one pair, no empty keys or values."""
    labels: dict[str, str] = {}
    for part in value.split(","):
        key, sep, val = part.strip().partition("=")
        if not sep or not key.strip() or not val.strip():
            raise ValueError(f"a selector is key=value[,key=value...], not {value!r}")
        labels[key.strip()] = val.strip()
    return labels


@lru_cache
def get_settings() -> Settings:
    return Settings()
