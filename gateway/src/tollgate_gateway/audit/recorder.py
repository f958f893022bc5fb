"""A flush hook that writes an audit row for every ORM change to an audited table.

The actor is whoever the request authenticated as (``session.info["audit_actor"]``, set by
the admin dependencies); changes made outside a request (the first admin at start-up) are
recorded as ``system``. Rows go into the same transaction as the change.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import event, insert, inspect
from sqlalchemy.orm import Session, UOWTransaction

from tollgate_schema import audit as events
from tollgate_schema.orm import AuditEvent

ACTOR = "audit_actor"
REQUEST_ID = "audit_request_id"


def set_actor(session: Any, actor: str, request_id: str | None = None) -> None:
    """Name who acts through this session (an ``AsyncSession`` or a ``Session``)."""
    session.info[ACTOR] = actor
    if request_id:
        session.info[REQUEST_ID] = request_id


def _columns(obj: Any) -> dict[str, Any]:
    mapper = inspect(obj).mapper
    return {c.key: getattr(obj, c.key) for c in mapper.column_attrs}


def _before(obj: Any) -> tuple[dict[str, Any], bool]:
    """Column values as they were before this flush, and whether a secret changed."""
    state = inspect(obj)
    values: dict[str, Any] = {}
    secret_changed = False
    for attr in state.mapper.column_attrs:
        history = state.attrs[attr.key].history
        if history.has_changes():
            values[attr.key] = history.deleted[0] if history.deleted else None
            secret_changed |= attr.key in events.SECRET_FIELDS
        else:
            values[attr.key] = getattr(obj, attr.key)
    return values, secret_changed


def _kind(obj: Any) -> str | None:
    table = getattr(type(obj), "__tablename__", None)
    return events.KINDS.get(table) if isinstance(table, str) else None


@event.listens_for(Session, "after_flush")
def _record(session: Session, _context: UOWTransaction) -> None:
    actor = str(session.info.get(ACTOR, "system"))
    source = "admin_api" if ACTOR in session.info else "system"
    request_id = session.info.get(REQUEST_ID)
    rows: list[dict[str, Any]] = []
    for op, objects in (
        ("create", session.new),
        ("update", session.dirty),
        ("delete", session.deleted),
    ):
        for obj in objects:
            kind = _kind(obj)
            if kind is None:
                continue
            if op == "create":
                after = events.snapshot(_columns(obj))
                before: dict[str, Any] = {}
                secret = False
            elif op == "delete":
                old, _ = _before(obj)
                before, after, secret = events.snapshot(old), {}, False
            else:
                old, secret = _before(obj)
                before, after = events.changed(events.snapshot(old), events.snapshot(_columns(obj)))
                if not before and not after and not secret:
                    continue
            values = after or before
            rows.append(
                events.row(
                    actor=actor,
                    source=source,
                    action=events.action_for(kind, op, before, after, secret),
                    kind=kind,
                    target_id=getattr(obj, "id", None),
                    name=events.target_name(kind, _columns(obj) if op != "delete" else values),
                    before=before,
                    after=after,
                    request_id=request_id,
                )
            )
    if rows:
        session.connection().execute(insert(AuditEvent), rows)
