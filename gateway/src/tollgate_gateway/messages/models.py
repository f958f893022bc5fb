"""``GET /v1/models`` for Anthropic clients (``anthropic-version`` or ``x-api-key`` sent):
the same aliases the key may use, in Anthropic's list shape."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from starlette.requests import Request

from tollgate_gateway.catalog.service import Alias
from tollgate_gateway.chat.service import ProxyService
from tollgate_gateway.keys.service import KeyRecord
from tollgate_gateway.messages.schemas import api_key, missing_key


def wants_anthropic(request: Request) -> bool:
    headers = request.headers
    return "anthropic-version" in headers or "x-api-key" in headers


async def anthropic_key(proxy: ProxyService, request: Request) -> KeyRecord:
    key = api_key(request.headers.get("x-api-key"), request.headers.get("authorization"))
    if key is None:
        raise missing_key()
    return await proxy.authenticate_key(key)


def model_info(alias: Alias) -> dict[str, Any]:
    created = datetime.fromtimestamp(alias.created, UTC).isoformat().replace("+00:00", "Z")
    return {"type": "model", "id": alias.alias, "display_name": alias.alias, "created_at": created}


def model_list(aliases: list[Alias]) -> dict[str, Any]:
    data = [model_info(a) for a in aliases]
    return {
        "data": data,
        "has_more": False,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
    }
