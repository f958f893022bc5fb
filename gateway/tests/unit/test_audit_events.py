"""The audit log's pure helpers."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from decimal import Decimal

from tollgate_schema import audit as events


def test_snapshot_drops_secrets_and_serialises() -> None:
    key_id = uuid.uuid4()
    when = datetime(2026, 12, 1, tzinfo=UTC)
    snap = events.snapshot(
        {
            "id": key_id,
            "key_hash": "ab" * 32,
            "password_hash": "$argon2id$...",
            "monthly_budget": Decimal("0E-8"),
            "created_at": when,
            "updated_at": when,
            "name": "k",
        }
    )
    assert snap == {
        "id": str(key_id),
        "monthly_budget": "0.00000000",
        "created_at": "2026-12-01T00:00:00+00:00",
        "name": "k",
    }


def test_changed_keeps_only_differences() -> None:
    before, after = events.changed({"a": 1, "b": 2}, {"a": 1, "b": 3, "c": 4})
    assert (before, after) == ({"b": 2, "c": None}, {"b": 3, "c": 4})


def test_actions() -> None:
    assert events.action_for("key", "create", {}, {"name": "k"}) == "key.create"
    assert events.action_for("key", "update", {"revoked_at": None}, {"revoked_at": "x"}) == (
        "key.revoke"
    )
    assert events.action_for("user", "update", {}, {}, secret_changed=True) == (
        "user.password_change"
    )
    assert events.action_for("user", "update", {"disabled": False}, {"disabled": True}) == (
        "user.disable"
    )
    assert events.action_for("model", "update", {"enabled": True}, {"enabled": False}) == (
        "model.update"
    )
    assert events.action_for("app", "delete", {"name": "a"}, {}) == "app.delete"


def test_row_and_target_names() -> None:
    assert events.target_name("model", {"alias": "gpt-4"}) == "gpt-4"
    assert events.target_name("user", {}) is None
    row = events.row(
        actor="x" * 400,
        source="operator",
        action="key.create",
        kind="key",
        target_id=7,
        name="n",
        before=None,
        after={"a": 1},
    )
    assert len(row["actor"]) == 320 and row["target_id"] == "7" and row["before"] is None
