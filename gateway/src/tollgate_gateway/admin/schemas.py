"""Admin API shapes."""

from __future__ import annotations

import uuid
from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from tollgate_gateway.fairqueue.core import parse_priority
from tollgate_gateway.requestpolicy.core import KEEP_ALIVE, OPTION_NAME, RequestPolicy

# Limits are stored as 32-bit integers and 0 would mean "unlimited" to the limiter: a limit
# is at least 1 (as in the ApiKey CRD); leave it out (or null) for no limit.
Limit = Annotated[int, Field(ge=1, le=2**31 - 1)]
# Money columns are NUMERIC(18, 8).
Money = Annotated[Decimal, Field(ge=0, max_digits=18, decimal_places=8)]
Name = Annotated[str, Field(max_length=200)]


def _priority(value: Any) -> str:
    """interactive, standard, batch, or a positive weight; stored as text."""
    parsed = parse_priority(value) if isinstance(value, str | int | float) else None
    if parsed is None:
        raise ValueError("priority must be interactive, standard, batch or a weight > 0")
    return parsed if isinstance(parsed, str) else f"{parsed:g}"


# A key's share of a full pool (README "When a pool is full"); null: standard.
Priority = Annotated[
    str,
    BeforeValidator(_priority),
    Field(max_length=32, examples=["interactive", "batch", "2.5"]),
]
SCALE = Decimal("0.00000001")


def plain_decimal(value: Decimal) -> str:
    """A money value as the database keeps it: plain digits, always 8 decimals ("1.00000000",
    never "1.00" on one answer and "1.00000000" on the next, never "0E-8")."""
    return format(value.quantize(SCALE), "f")


# Money in answers: a JSON string of fixed scale (exact; a float would round).
MoneyOut = Annotated[
    Decimal,
    PlainSerializer(plain_decimal, return_type=str),
    WithJsonSchema({"type": "string", "pattern": r"^\d+\.\d{8}$", "examples": ["1.50000000"]}),
]


def _split_allowed(value: object) -> object:
    if isinstance(value, str):
        return [p.strip() for p in value.split(",") if p.strip()]
    return value


# allowed_models in answers: a list, as it is given.
AllowedOut = Annotated[list[str], BeforeValidator(_split_allowed)]


def _no_nul(value: object, where: str = "") -> None:
    """PostgreSQL text cannot hold NUL: refuse it here, with the field's name."""
    if isinstance(value, str):
        if "\x00" in value:
            raise ValueError(f"{where or 'value'} must not contain NUL characters")
    elif isinstance(value, list):
        for item in value:
            _no_nul(item, where)


class Input(BaseModel):
    """A request body: no NUL characters in any text, and explicit nulls refused for the
    fields listed in `not_null` (columns that cannot be empty)."""

    not_null: ClassVar[frozenset[str]] = frozenset()

    @model_validator(mode="before")
    @classmethod
    def _check_raw(cls, data: object) -> object:
        if isinstance(data, dict):
            for name, value in data.items():
                if value is None and name in cls.not_null:
                    raise ValueError(f"{name} cannot be null; leave it out to keep it as it is")
                _no_nul(value, str(name))
        return data


def _allowed(value: str | list[str]) -> str:
    items = [value] if isinstance(value, str) else value
    parts = [p.strip() for item in items for p in item.split(",") if p.strip()]
    if not parts:
        raise ValueError("allowed_models needs '*' or at least one model name or glob")
    return ",".join(parts)


class LoginIn(Input):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"email": "admin@localhost", "password": "change-me"}]}
    )

    email: str = Field(max_length=320)
    password: str = Field(max_length=1024)


class TokenOut(BaseModel):
    access_token: str = Field(
        description="A JWT: send it as `Authorization: Bearer <token>` to every /admin path."
    )
    token_type: Literal["bearer"] = "bearer"
    expires_in: int = Field(
        description="Seconds until the token expires (JWT_TTL_SECONDS); log in again then.",
        examples=[86400],
    )


class KeyCreate(Input):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "name": "billing-service",
                    "app": "billing",
                    "allowed_models": ["chat-small", "text-embedding-*"],
                    "rate_limit_rpm": 60,
                    "monthly_budget": "25.00",
                }
            ]
        },
    )

    name: str = Field(min_length=1, max_length=200)
    owner: Name | None = None
    app: Name | None = None
    allowed_models: str | list[str] = "*"
    rate_limit_rpm: Limit | None = None
    tpm_limit: Limit | None = None
    concurrency_limit: Limit | None = None
    monthly_budget: Money | None = None
    priority: Priority | None = None
    expires_at: datetime | None = None
    disabled: bool = False

    @field_validator("allowed_models")
    @classmethod
    def _check_allowed(cls, value: str | list[str]) -> str:
        return _allowed(value)

    @field_validator("expires_at")
    @classmethod
    def _aware(cls, value: datetime | None) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("expires_at needs a timezone, e.g. 2027-01-01T00:00:00Z")
        return value


class KeyUpdate(Input):
    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"rate_limit_rpm": 120}]}
    )
    not_null = frozenset({"name", "allowed_models", "disabled"})

    name: str | None = Field(None, min_length=1, max_length=200)
    owner: Name | None = None
    app: Name | None = None
    allowed_models: str | list[str] | None = None
    rate_limit_rpm: Limit | None = None
    tpm_limit: Limit | None = None
    concurrency_limit: Limit | None = None
    monthly_budget: Money | None = None
    priority: Priority | None = None
    expires_at: datetime | None = None
    disabled: bool | None = None

    @field_validator("allowed_models")
    @classmethod
    def _check_allowed(cls, value: str | list[str] | None) -> str | None:
        return None if value is None else _allowed(value)


class KeyOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    name: str
    key_prefix: str
    owner: str | None
    app: str | None
    allowed_models: AllowedOut = Field(examples=[["llama3", "text-embedding-*"]])
    rate_limit_rpm: int | None
    tpm_limit: int | None
    concurrency_limit: int | None
    monthly_budget: MoneyOut | None
    priority: str | None = None
    expires_at: datetime | None
    disabled: bool
    revoked_at: datetime | None
    managed_by: str | None
    created_at: datetime
    updated_at: datetime


class KeyCreated(KeyOut):
    key: str = Field(description="The plaintext key. Shown once; only its hash is stored.")


class KeyBudget(BaseModel):
    id: uuid.UUID
    month: str
    monthly_budget: MoneyOut | None
    spent: MoneyOut
    remaining: MoneyOut | None


class ReplicaIn(BaseModel):
    """One Ollama replica of an alias (the operator writes these from a pool's Pods)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=253, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:-]*$")
    url: str = Field(pattern=r"^https?://", max_length=500)


class RoutingIn(BaseModel):
    """How requests are spread over an alias's replicas (an OllamaPool's spec.routing)."""

    model_config = ConfigDict(extra="forbid")

    pool: str | None = Field(None, max_length=300)
    policy: Literal["modelAware", "leastLoad", "roundRobin"] = "modelAware"
    prefix_chars: int = Field(256, ge=0, le=65536)
    # The pool queue (README "When a pool is full"): parallel requests per replica (Ollama's
    # OLLAMA_NUM_PARALLEL; unset: no queue), how long and how many may wait, and how long a
    # request is held while the pool has no replica (a pool that scales from zero).
    slots: int | None = Field(None, ge=1, le=256)
    max_wait_seconds: float | None = Field(None, gt=0, le=3600)
    max_queue: int | None = Field(None, ge=1, le=100_000)
    cold_start_seconds: float | None = Field(None, gt=0, le=3600)


Count = Annotated[int, Field(ge=1, le=2**31 - 1)]
OptionName = Annotated[str, Field(pattern=OPTION_NAME.pattern, examples=["temperature"])]


def _unique(names: list[str] | None) -> list[str] | None:
    return None if names is None else sorted(set(names))


class RequestPolicyIn(BaseModel):
    """What one request to the alias may cost (a ModelAlias's spec.requestPolicy; README
    "Request policy"). Checked before the request is admitted or sent to Ollama."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"max_output_tokens": 1024, "max_num_ctx": 8192, "keep_alive": "5m"},
                {"max_output_tokens": 512, "num_ctx": 4096, "mode": "reject"},
            ]
        },
    )

    max_output_tokens: Count | None = Field(
        None,
        description="Cap on max_tokens / max_completion_tokens (OpenAI, Messages), "
        "max_output_tokens (Responses) and options.num_predict (native); also what "
        "admission reserves. Sent as the default when the client sends none.",
    )
    default_output_tokens: Count | None = Field(
        None,
        description="Sent when the client sends no output bound (at most max_output_tokens).",
    )
    max_num_ctx: Count | None = Field(
        None, description="Cap on options.num_ctx (native API). Not with num_ctx."
    )
    num_ctx: Count | None = Field(
        None,
        description="options.num_ctx the gateway sets on every native request, whatever the "
        "client asks. Not with max_num_ctx.",
    )
    keep_alive: str | None = Field(
        None,
        max_length=32,
        pattern=KEEP_ALIVE.pattern,
        description="keep_alive the gateway sets on every native request, whatever the client "
        "asks (a Go duration such as '5m', or whole seconds): clients cannot pin a model.",
        examples=["5m"],
    )
    allowed_options: Annotated[list[OptionName] | None, AfterValidator(_unique)] = Field(
        None,
        max_length=64,
        description="The Ollama options a client may set (native API); others are dropped "
        "(clamp) or refused (reject). Left out: any option.",
    )
    mode: Literal["clamp", "reject"] = Field(
        "clamp",
        description="clamp: lower what is over a limit to it; reject: answer 400 naming it.",
    )

    @model_validator(mode="after")
    def _consistent(self) -> RequestPolicyIn:
        # The gateway's own policy decides what is consistent (one rule, one place): its
        # ValueError becomes this field's 422.
        RequestPolicy.from_dict(self.to_row())
        return self

    def to_row(self) -> dict[str, Any]:
        """As the ``models.request_policy`` column holds it (nulls left out)."""
        return self.model_dump(exclude_none=True)


class ModelIn(Input):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "alias": "chat-small",
                    "backend_tag": "qwen2.5:0.5b",
                    "backend_url": "http://127.0.0.1:11434",
                    "input_price_per_mtok": "0.10",
                    "output_price_per_mtok": "0.40",
                }
            ]
        },
    )

    alias: str = Field(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:/-]*$")
    backend_tag: str = Field(min_length=1, max_length=300)
    backend_url: str | None = Field(None, pattern=r"^https?://", max_length=500)
    # Several replicas: each request goes to one of them (see README "Routing").
    replicas: list[ReplicaIn] | None = Field(None, max_length=256)
    routing: RoutingIn | None = None
    request_policy: RequestPolicyIn | None = None
    enabled: bool = True
    input_price_per_mtok: Money = Decimal(0)
    output_price_per_mtok: Money = Decimal(0)


class ModelUpdate(Input):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"enabled": False}]})
    not_null = frozenset(
        {"backend_tag", "enabled", "input_price_per_mtok", "output_price_per_mtok"}
    )

    backend_tag: str | None = Field(None, min_length=1, max_length=300)
    backend_url: str | None = Field(None, pattern=r"^https?://", max_length=500)
    replicas: list[ReplicaIn] | None = Field(None, max_length=256)
    routing: RoutingIn | None = None
    request_policy: RequestPolicyIn | None = Field(
        None, description="The alias's request policy; null removes it."
    )
    enabled: bool | None = None
    input_price_per_mtok: Money | None = None
    output_price_per_mtok: Money | None = None


class PoolQueueOut(BaseModel):
    """One pool and model's queue: in flight and waiting across every gateway (as this
    gateway last read them, at most a poll interval old), this gateway's waiting requests by
    key (or app), and the settings in force."""

    pool: str
    model: str
    capacity: int = Field(description="Slots: parallel requests per replica x ready replicas.")
    in_flight: int
    waiting: int
    max_queue: int
    waiting_here_by_flow: dict[str, int]


class ModelOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    alias: str
    backend_tag: str
    backend_url: str | None
    replicas: list[dict[str, str]] | None = None
    routing: dict[str, Any] | None = None
    request_policy: dict[str, Any] | None = Field(
        None,
        description="What one request may cost (the fields of RequestPolicyIn that are set); "
        "null: no policy.",
    )
    enabled: bool
    pending: bool = Field(
        description="Disabled until its model is ready (a ModelAlias still pulling): keys "
        "that may use it get 503 model_not_ready with Retry-After."
    )
    input_price_per_mtok: MoneyOut
    output_price_per_mtok: MoneyOut
    managed_by: str | None
    created_at: datetime


Role = Literal["admin", "viewer"]


class UserIn(Input):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"email": "ops@example.org", "password": "a-long-passphrase", "role": "viewer"}
            ]
        },
    )

    # Internal domains (admin@localhost, team@corp.internal) are fine, so only the shape is checked.
    email: str = Field(pattern=r"^[^@\s]+@[^@\s]+$", max_length=320)
    password: str = Field(min_length=12, max_length=1024)
    role: Role = "viewer"


class UserUpdate(Input):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"role": "admin"}]})
    not_null = frozenset({"password", "role", "disabled"})

    password: str | None = Field(None, min_length=12, max_length=1024)
    role: Role | None = None
    disabled: bool | None = None


class UserOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    email: str
    role: str
    disabled: bool
    created_at: datetime


class AppIn(Input):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"name": "billing", "owner": "team-a"}]},
    )

    name: str = Field(min_length=1, max_length=200)
    owner: Name | None = None
    description: str | None = None


class AppOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    name: str
    owner: str | None
    description: str | None
    created_at: datetime


class UsageRowOut(BaseModel):
    group: str | None = Field(
        description="What the row groups by: the key's id, the alias or the app (kept for "
        "older clients; `id` and `name` say the same, readably)."
    )
    id: str | None = Field(
        description="The key's, alias's or app's id; null for requests without one, and for an "
        "alias or app that no longer exists."
    )
    name: str | None = Field(description="The key's name, the alias or the app's name.")
    requests: int = Field(description="Every answered request, refused ones included.")
    errors: int = Field(description="Answers with status 400 or more (refusals included).")
    refused: int = Field(description="Requests refused by a limit (429): no tokens, no cost.")
    prompt_tokens: int
    completion_tokens: int
    cost: MoneyOut
    latency_p50_ms: float | None
    latency_p95_ms: float | None
    ttft_p50_ms: float | None


class UsageSummary(BaseModel):
    since: datetime
    until: datetime
    group_by: Literal["key", "alias", "app"]
    rows: list[UsageRowOut]
