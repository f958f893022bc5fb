"""Pure helpers: what an audit row says about a change."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from datetime import date, datetime
from decimal import Decimal
from typing import Any

SECRET_FIELDS = frozenset({"key_hash", "password_hash"})
"""Never recorded; a change to one shows as the action (``user.password_change``) only."""

IGNORED_FIELDS = frozenset({"updated_at"})

KINDS = {"api_keys": "key", "models": "model", "users": "user", "apps": "app"}
"""Audited tables and the target type their rows are recorded as."""


def jsonable(value: Any) -> Any:
    if isinstance(value, Decimal):
        return format(value, "f")  # never "0E-8"
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, uuid.UUID):
        return str(value)
    return value


def snapshot(values: Mapping[str, Any]) -> dict[str, Any]:
    """The recordable fields of a row."""
    return {
        k: jsonable(v)
        for k, v in values.items()
        if k not in SECRET_FIELDS and k not in IGNORED_FIELDS
    }


def changed(
    before: Mapping[str, Any], after: Mapping[str, Any]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Only the fields that differ, each side in its own dict."""
    keys = [k for k in after if k in before and before[k] != after[k]]
    keys += [k for k in after if k not in before]
    return {k: before.get(k) for k in keys}, {k: after[k] for k in keys}


def action_for(
    kind: str,
    op: str,
    before: Mapping[str, Any],
    after: Mapping[str, Any],
    secret_changed: bool = False,
) -> str:
    """``key.create``, ``key.revoke``, ``user.password_change``, ``model.update``…"""
    if op in ("create", "delete"):
        return f"{kind}.{op}"
    if kind == "key" and before.get("revoked_at") is None and after.get("revoked_at") is not None:
        return "key.revoke"
    if kind == "user" and secret_changed:
        return "user.password_change"
    if kind in ("key", "user") and not before.get("disabled") and after.get("disabled"):
        return f"{kind}.disable"
    return f"{kind}.update"


def target_name(kind: str, values: Mapping[str, Any]) -> str | None:
    field = {"key": "name", "model": "alias", "user": "email", "app": "name"}[kind]
    value = values.get(field)
    return None if value is None else str(value)


def row(
    *,
    actor: str,
    source: str,
    action: str,
    kind: str,
    target_id: Any,
    name: str | None,
    before: Mapping[str, Any] | None,
    after: Mapping[str, Any] | None,
    request_id: str | None = None,
) -> dict[str, Any]:
    """Values of one ``audit_events`` row."""
    return {
        "actor": actor[:320],
        "source": source,
        "action": action,
        "target_type": kind,
        "target_id": None if target_id is None else str(target_id),
        "target_name": None if name is None else name[:320],
        "before": dict(before) if before else None,
        "after": dict(after) if after else None,
        "request_id": request_id,
    }
