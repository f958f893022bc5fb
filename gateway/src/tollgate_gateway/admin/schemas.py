"""Admin API shapes."""

from __future__ import annotations

import uuid
from datetime import datetime
from decimal import Decimal
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

NonNegative = Annotated[int, Field(ge=0)]


def _allowed(value: str | list[str]) -> str:
    items = [value] if isinstance(value, str) else value
    parts = [p.strip() for item in items for p in item.split(",") if p.strip()]
    if not parts:
        raise ValueError("allowed_models needs '*' or at least one model name or glob")
    return ",".join(parts)


class LoginIn(BaseModel):
    email: str
    password: str


class TokenOut(BaseModel):
    access_token: str
    token_type: Literal["bearer"] = "bearer"
    expires_in: int


class KeyCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200)
    owner: str | None = None
    app: str | None = None
    allowed_models: str | list[str] = "*"
    rate_limit_rpm: NonNegative | None = None
    tpm_limit: NonNegative | None = None
    concurrency_limit: NonNegative | None = None
    monthly_budget: Annotated[Decimal, Field(ge=0, max_digits=18, decimal_places=8)] | None = None
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


class KeyUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(None, min_length=1, max_length=200)
    owner: str | None = None
    app: str | None = None
    allowed_models: str | list[str] | None = None
    rate_limit_rpm: NonNegative | None = None
    tpm_limit: NonNegative | None = None
    concurrency_limit: NonNegative | None = None
    monthly_budget: Annotated[Decimal, Field(ge=0, max_digits=18, decimal_places=8)] | None = None
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
    allowed_models: str
    rate_limit_rpm: int | None
    tpm_limit: int | None
    concurrency_limit: int | None
    monthly_budget: Decimal | None
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
    monthly_budget: Decimal | None
    spent: Decimal
    remaining: Decimal | None


class ModelIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    alias: str = Field(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:/-]*$")
    backend_tag: str = Field(min_length=1, max_length=300)
    backend_url: str | None = Field(None, pattern=r"^https?://")
    enabled: bool = True
    input_price_per_mtok: Annotated[Decimal, Field(ge=0)] = Decimal(0)
    output_price_per_mtok: Annotated[Decimal, Field(ge=0)] = Decimal(0)


class ModelUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    backend_tag: str | None = Field(None, min_length=1, max_length=300)
    backend_url: str | None = Field(None, pattern=r"^https?://")
    enabled: bool | None = None
    input_price_per_mtok: Annotated[Decimal, Field(ge=0)] | None = None
    output_price_per_mtok: Annotated[Decimal, Field(ge=0)] | None = None


class ModelOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    alias: str
    backend_tag: str
    backend_url: str | None
    enabled: bool
    input_price_per_mtok: Decimal
    output_price_per_mtok: Decimal
    managed_by: str | None
    created_at: datetime


Role = Literal["admin", "viewer"]


class UserIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # Internal domains (admin@localhost, team@corp.internal) are fine, so only the shape is checked.
    email: str = Field(pattern=r"^[^@\s]+@[^@\s]+$", max_length=320)
    password: str = Field(min_length=12)
    role: Role = "viewer"


class UserUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    password: str | None = Field(None, min_length=12)
    role: Role | None = None
    disabled: bool | None = None


class UserOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    email: str
    role: str
    disabled: bool
    created_at: datetime


class AppIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200)
    owner: str | None = None
    description: str | None = None


class AppOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    name: str
    owner: str | None
    description: str | None
    created_at: datetime


class UsageRowOut(BaseModel):
    group: str | None
    requests: int
    errors: int
    prompt_tokens: int
    completion_tokens: int
    cost: Decimal
    latency_p50_ms: float | None
    latency_p95_ms: float | None
    ttft_p50_ms: float | None


class UsageSummary(BaseModel):
    since: datetime
    until: datetime
    group_by: Literal["key", "alias", "app"]
    rows: list[UsageRowOut]
