"""Typed spec and status of the custom resources; the CRD schemas in crds/ are the contract.

Field names are snake_case here and camelCase on the wire (``by_alias``). A unit test
checks that every object in these models has the same properties as the CRD schema, and
that every sample validates against both.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PlainSerializer
from pydantic.alias_generators import to_camel

GROUP = "tollgate.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"

APIKEYS = "apikeys"
MODELALIASES = "modelaliases"
OLLAMAPOOLS = "ollamapools"

KINDS = {APIKEYS: "ApiKey", MODELALIASES: "ModelAlias", OLLAMAPOOLS: "OllamaPool"}

MAX_INT32 = 2**31 - 1


def format_time(value: datetime) -> str:
    """RFC 3339 in UTC with a Z, as Kubernetes writes it (second precision)."""
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


Timestamp = Annotated[datetime, PlainSerializer(format_time, return_type=str)]
DecimalString = Annotated[Decimal, PlainSerializer(lambda d: format(d, "f"), return_type=str)]


class Resource(BaseModel):
    """camelCase on the wire; unknown fields are an error (the schema is closed)."""

    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True
    )

    def to_wire(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


# -- conditions ------------------------------------------------------------------------------


class ConditionStatus(StrEnum):
    TRUE = "True"
    FALSE = "False"
    UNKNOWN = "Unknown"


class Condition(Resource):
    type: str
    status: ConditionStatus
    reason: str
    message: str = ""
    last_transition_time: Timestamp | None = None
    observed_generation: int | None = None


def set_condition(
    conditions: list[Condition],
    type_: str,
    status: bool,
    reason: str,
    message: str,
    generation: int | None,
    now: datetime | None = None,
) -> list[Condition]:
    """A new list with `type_` set; the transition time moves only when the status flips."""
    wanted = ConditionStatus.TRUE if status else ConditionStatus.FALSE
    old = next((c for c in conditions if c.type == type_), None)
    when = (
        old.last_transition_time
        if old is not None and old.status == wanted and old.last_transition_time
        else (now or datetime.now(UTC)).replace(microsecond=0)
    )
    new = Condition(
        type=type_,
        status=wanted,
        reason=reason,
        message=message,
        last_transition_time=when,
        observed_generation=generation,
    )
    return [new if c.type == type_ else c for c in conditions] if old else [*conditions, new]


def condition(conditions: list[Condition], type_: str) -> Condition | None:
    return next((c for c in conditions if c.type == type_), None)


# -- ApiKey ----------------------------------------------------------------------------------


class Limits(Resource):
    requests_per_minute: int | None = Field(None, ge=1, le=MAX_INT32)
    tokens_per_minute: int | None = Field(None, ge=1, le=MAX_INT32)
    concurrency: int | None = Field(None, ge=1, le=MAX_INT32)


class SecretKeyRef(Resource):
    name: str
    key: str = "api-key"


class Rotation(Resource):
    token: str = ""
    grace_period_seconds: int | None = Field(None, ge=0, le=30 * 86400)


PRIORITY_PATTERN = r"^(interactive|standard|batch|[0-9]{1,4}([.][0-9]{1,3})?)$"


class ApiKeySpec(Resource):
    owner: str | None = None
    app: str | None = None
    allowed_models: list[str] = Field(default_factory=lambda: ["*"])
    limits: Limits = Field(default_factory=Limits)
    monthly_budget: DecimalString | None = None
    # Its share of a full pool's queue: interactive, standard, batch or a weight ("2.5").
    priority: str | None = Field(None, max_length=16, pattern=PRIORITY_PATTERN)
    expires_at: Timestamp | None = None
    disabled: bool = False
    secret_name: str | None = None
    existing_secret: SecretKeyRef | None = None
    rotation: Rotation | None = None

    def secret_name_for(self, name: str) -> str:
        return self.secret_name or f"{name}-api-key"


class ApiKeyStatus(Resource):
    observed_generation: int | None = None
    key_id: str | None = None
    key_prefix: str | None = None
    secret_name: str | None = None
    last_rotation_time: Timestamp | None = None
    keys_in_grace: int | None = None
    conditions: list[Condition] = Field(default_factory=list)


# -- OllamaPool ------------------------------------------------------------------------------


class LocalObjectReference(Resource):
    name: str


class Storage(Resource):
    size: str = "50Gi"
    storage_class_name: str | None = None


class Toleration(Resource):
    key: str | None = None
    operator: Literal["Exists", "Equal"] | None = None
    value: str | None = None
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    toleration_seconds: int | None = None


class EnvVar(Resource):
    name: str
    value: str | None = None
    value_from: dict[str, Any] | None = None


Quantity = int | str


class ResourceRequirements(Resource):
    requests: dict[str, Quantity] = Field(default_factory=dict)
    limits: dict[str, Quantity] = Field(default_factory=dict)


class PoolRouting(Resource):
    """``spec.routing``: how gateways spread requests over the replicas."""

    policy: Literal["modelAware", "leastLoad", "roundRobin"] = "modelAware"
    prefix_chars: int | None = Field(None, ge=0, le=65536)

    def to_row(self, pool: str, slots: int | None = None) -> dict[str, Any]:
        """As the gateway's ``models.routing`` column holds it. ``slots``: the pool's
        ``numParallel`` (parallel requests per replica; Ollama's default, 1, when unset),
        which turns the gateway's pool queue on."""
        chars = 256 if self.prefix_chars is None else self.prefix_chars
        return {"pool": pool, "policy": self.policy, "prefix_chars": chars, "slots": slots or 1}


class PoolAutoscaling(Resource):
    """``spec.autoscaling``: replicas follow the gateways' demand (README "Autoscaling").

    The load of a replica is (requests in flight + queued) per parallel slot
    (``numParallel``); ``targetLoadPercent`` 100 means one request per slot.
    """

    min_replicas: int = Field(0, ge=0, le=64)
    max_replicas: int = Field(ge=1, le=64)
    target_load_percent: int = Field(100, ge=10, le=1000)
    scale_up_delay_seconds: int = Field(0, ge=0, le=3600)
    scale_down_delay_seconds: int = Field(300, ge=0, le=86400)
    cold_start_seconds: int = Field(600, ge=1, le=3600)
    drain_seconds: int = Field(120, ge=0, le=3600)
    warm_models: list[str] = Field(default_factory=list, max_length=16)


class OllamaPoolSpec(Resource):
    replicas: int = Field(1, ge=0, le=64)
    image: str | None = None
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] | None = None
    image_pull_secrets: list[LocalObjectReference] = Field(default_factory=list)
    gpus: int = Field(1, ge=0, le=16)
    gpu_resource_name: str = "nvidia.com/gpu"
    resources: ResourceRequirements = Field(default_factory=ResourceRequirements)
    node_selector: dict[str, str] = Field(default_factory=dict)
    tolerations: list[Toleration] = Field(default_factory=list)
    affinity: dict[str, Any] | None = None
    storage: Storage = Field(default_factory=Storage)
    keep_alive: str | None = None
    num_parallel: int | None = Field(None, ge=1, le=256)
    max_queue: int | None = Field(None, ge=1, le=100_000)
    routing: PoolRouting = Field(default_factory=PoolRouting)
    autoscaling: PoolAutoscaling | None = None
    env: list[EnvVar] = Field(default_factory=list)

    @property
    def slots(self) -> int:
        """Requests one replica serves at once: numParallel, else Ollama's default of 1
        request per model (OLLAMA_NUM_PARALLEL unset)."""
        return self.num_parallel or 1

    def routing_row(self, pool: str) -> dict[str, Any]:
        """``models.routing`` for the aliases of this pool: spec.routing, and for an
        autoscaled pool the hold deadline of a request that finds no ready replica."""
        # The gateway's pool queue admits slots x ready replicas (what the target counts).
        row = self.routing.to_row(pool, self.slots)
        if self.autoscaling is not None:
            row["autoscaling"] = True
            row["cold_start_seconds"] = self.autoscaling.cold_start_seconds
        return row


class PoolPod(Resource):
    name: str
    ready: bool
    models: list[str] | None = None
    loaded: list[str] | None = None
    message: str | None = None


class OllamaPoolStatus(Resource):
    observed_generation: int | None = None
    replicas: int | None = None
    ready_replicas: int | None = None
    loaded_models: int | None = None
    selector: str | None = None
    service_url: str | None = Field(None, alias="serviceURL")
    # Autoscaling (spec.autoscaling): the decision, persisted before it is carried out so a
    # restarted operator neither loses nor repeats it. ``replicas`` is then what the
    # StatefulSet is set to; it stays above ``desiredReplicas`` while replicas drain.
    desired_replicas: int | None = None
    demand: int | None = None
    last_scale_time: Timestamp | None = None
    last_scale_reason: str | None = None
    draining_since: Timestamp | None = None
    pods: list[PoolPod] = Field(default_factory=list)
    conditions: list[Condition] = Field(default_factory=list)


# -- ModelAlias ------------------------------------------------------------------------------


class Prices(Resource):
    input_per_million_tokens: DecimalString = Decimal(0)
    output_per_million_tokens: DecimalString = Decimal(0)


class RequestPolicy(Resource):
    """``spec.requestPolicy``: what one request to the alias may cost (README "Request
    policy"); the gateway applies it before a request is admitted or sent to Ollama."""

    max_output_tokens: int | None = Field(None, ge=1, le=MAX_INT32)
    default_output_tokens: int | None = Field(None, ge=1, le=MAX_INT32)
    max_num_ctx: int | None = Field(None, ge=1, le=MAX_INT32)
    num_ctx: int | None = Field(None, ge=1, le=MAX_INT32)
    keep_alive: str | None = Field(None, max_length=32)
    allowed_options: list[str] | None = Field(None, max_length=64)
    mode: Literal["clamp", "reject"] = "clamp"

    def to_row(self) -> dict[str, Any]:
        """As the gateway's ``models.request_policy`` column holds it (snake_case, nulls
        left out)."""
        row = self.model_dump(mode="json", exclude_none=True)
        if self.allowed_options is not None:
            row["allowed_options"] = sorted(set(self.allowed_options))
        return row


class ModelAliasSpec(Resource):
    alias: str
    model: str
    pool_ref: LocalObjectReference
    enabled: bool = True
    prices: Prices = Field(default_factory=Prices)
    delete_model_on_removal: bool = False
    request_policy: RequestPolicy | None = None


class PullState(StrEnum):
    WAITING = "Waiting"  # the replica is not ready yet
    PENDING = "Pending"  # ready, pull not started (or waiting for a retry)
    PULLING = "Pulling"
    PRESENT = "Present"
    FAILED = "Failed"
    UNREACHABLE = "Unreachable"


class ReplicaPull(Resource):
    name: str
    state: PullState
    completed: int | None = None
    total: int | None = None
    percent: int | None = Field(None, ge=0, le=100)
    message: str | None = None


class ModelAliasStatus(Resource):
    observed_generation: int | None = None
    pulled: str | None = None
    serving_model: str | None = None
    backend_url: str | None = Field(None, alias="backendURL")
    pods: list[ReplicaPull] = Field(default_factory=list)
    conditions: list[Condition] = Field(default_factory=list)


# -- a custom object as the services see it ----------------------------------------------------


@dataclass(frozen=True)
class ObjectRef:
    """A custom object as the services see it: its kind and its raw body.

    The body is kept by reference: a kopf daemon's body is updated in place as the object
    changes, so every property below reads the current state, never a snapshot.
    """

    plural: str
    body: Mapping[str, Any]

    @classmethod
    def of(cls, plural: str, body: Mapping[str, Any]) -> ObjectRef:
        return cls(plural, body)

    @property
    def _meta(self) -> Mapping[str, Any]:
        meta: Mapping[str, Any] = self.body.get("metadata") or {}
        return meta

    @property
    def namespace(self) -> str:
        return str(self._meta.get("namespace", ""))

    @property
    def name(self) -> str:
        return str(self._meta.get("name", ""))

    @property
    def uid(self) -> str:
        return str(self._meta.get("uid", ""))

    @property
    def generation(self) -> int | None:
        value = self._meta.get("generation")
        return int(value) if value is not None else None

    @property
    def kind(self) -> str:
        return KINDS[self.plural]

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.plural, self.namespace, self.name)

    @property
    def managed_by(self) -> str:
        return f"operator:{self.namespace}/{self.name}"

    @property
    def deleting(self) -> bool:
        return bool(self._meta.get("deletionTimestamp"))

    def spec(self) -> dict[str, Any]:
        return dict(self.body.get("spec") or {})

    def status(self) -> dict[str, Any]:
        return dict(self.body.get("status") or {})
