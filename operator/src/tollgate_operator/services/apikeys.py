"""ApiKey → a key in a Secret and its hashed row in the gateway's ``api_keys`` table.

The Secret is the source of truth for key material: it holds the key, the row id
(annotation ``tollgate.dev/key-id``) and the rotation token it answers, written together.
So a restarted operator (or a second replica) reuses what is there and never mints a key
twice; a key is minted only when the Secret has none (new, lost, unreadable) or the
rotation token changed. Every other live row of the resource is a previous key: it keeps
working until its grace period ends (``expires_at``), then it is revoked.
"""

from __future__ import annotations

import logging
import uuid
from datetime import datetime, timedelta
from typing import Any

import kopf

from tollgate_operator import metrics
from tollgate_operator.builders.labels import (
    APIKEY_LABEL,
    KEY_ID_ANNOTATION,
    MANAGED_BY,
    ROTATION_TOKEN_ANNOTATION,
)
from tollgate_operator.builders.secret import KEY_FIELD, build_key_secret, secret_value
from tollgate_operator.db import Database, Duplicate, Row, RowPlan
from tollgate_operator.k8s import Conflict, Kube
from tollgate_operator.resources import (
    ApiKeySpec,
    ApiKeyStatus,
    ObjectRef,
    format_time,
    set_condition,
)
from tollgate_operator.services.common import (
    EventSink,
    Locks,
    StatusWriter,
    parse_spec,
    parse_status,
    ready_changed,
    utcnow,
)
from tollgate_operator.services.errors import InvalidSpec, ReconcileError, Unavailable, Waiting
from tollgate_operator.settings import Settings
from tollgate_schema.keys import KEY_PREFIX, display_prefix, hash_key, key_fingerprint, mint_key

logger = logging.getLogger(__name__)

MIN_USER_KEY_LENGTH = 20
# Columns previous keys share with the current one (limits follow the resource).
SHARED_COLUMNS = (
    "name",
    "owner",
    "app",
    "allowed_models",
    "rate_limit_rpm",
    "tpm_limit",
    "concurrency_limit",
    "monthly_budget",
    "priority",
    "disabled",
    "managed_by",
)


def _valid_generated(key: str | None) -> bool:
    return key is not None and key.startswith(KEY_PREFIX) and len(key) >= 30


def _valid_uuid(value: str | None) -> bool:
    try:
        uuid.UUID(str(value))
    except ValueError:
        return False
    return True


def shown_key(spec: ApiKeySpec, key: str, key_hash: str) -> str:
    """What status, Events and the gateway show of a key: the start of a generated one; of a
    key from spec.existingSecret (chosen by a person, maybe short) only a fingerprint."""
    return key_fingerprint(key_hash) if spec.existing_secret is not None else display_prefix(key)


def desired_row(ref: ObjectRef, spec: ApiKeySpec, key_id: str, key: str, pepper: bytes) -> Row:
    key_hash = hash_key(key, pepper)
    return {
        "id": uuid.UUID(key_id),
        "name": f"{ref.namespace}/{ref.name}"[:200],
        "key_hash": key_hash,
        "key_prefix": shown_key(spec, key, key_hash),
        "owner": spec.owner,
        "app": spec.app,
        "allowed_models": ",".join(spec.allowed_models),
        "rate_limit_rpm": spec.limits.requests_per_minute,
        "tpm_limit": spec.limits.tokens_per_minute,
        "concurrency_limit": spec.limits.concurrency,
        "monthly_budget": spec.monthly_budget,
        "priority": spec.priority,
        "expires_at": spec.expires_at,
        "disabled": spec.disabled,
        "revoked_at": None,
        "managed_by": ref.managed_by,
    }


def _diff(row: Row, desired: Row) -> Row:
    return {k: v for k, v in desired.items() if k != "id" and row.get(k) != v}


def plan_key_rows(rows: list[Row], desired: Row, *, now: datetime, grace_end: datetime) -> RowPlan:
    """The current key's row as desired; previous keys capped at their grace end, then revoked.

    The current row is found by id (from the Secret), else by hash (a key that comes back,
    e.g. a user's Secret set to an earlier value), else it is inserted.
    """
    plan = RowPlan()
    current = next((r for r in rows if r["id"] == desired["id"]), None)
    if current is None:
        current = next((r for r in rows if r["key_hash"] == desired["key_hash"]), None)
    if current is None:
        plan.inserts.append(dict(desired))
        plan.current_id = desired["id"]
        plan.notes.append("inserted")
    else:
        plan.current_id = current["id"]
        changes = _diff(current, desired)
        if changes:
            plan.updates.append((current["id"], changes))
            plan.notes.append("updated:" + ",".join(sorted(changes)))
    shared = {k: desired[k] for k in SHARED_COLUMNS}
    for row in rows:
        if row["id"] == plan.current_id or row["revoked_at"] is not None:
            continue
        ends = [t for t in (row["expires_at"], grace_end, desired["expires_at"]) if t is not None]
        cap = min(ends)
        if cap <= now:
            plan.updates.append((row["id"], {"revoked_at": now}))
            plan.notes.append("revoked")
            continue
        plan.in_grace.append(cap)
        changes = _diff(row, {**shared, "expires_at": cap})
        if changes:
            plan.updates.append((row["id"], changes))
            if "expires_at" in changes and row["expires_at"] != cap:
                plan.notes.append("grace")
    return plan


class ApiKeyService:
    def __init__(
        self,
        settings: Settings,
        kube: Kube,
        db: Database,
        locks: Locks,
        statuses: StatusWriter,
        events: EventSink,
    ) -> None:
        self._settings = settings
        self._kube = kube
        self._db = db
        self._locks = locks
        self._statuses = statuses
        self._events = events

    async def reconcile(self, ref: ObjectRef) -> ApiKeyStatus:
        async with self._locks.hold(ref.key):
            status = parse_status(ApiKeyStatus, self._statuses.current(ref))
            try:
                spec = parse_spec(ApiKeySpec, ref)
                return await self._reconcile(ref, spec, status)
            except ReconcileError as err:
                await self._failed(ref, status, err)
                raise

    async def revoke(self, ref: ObjectRef) -> int:
        """Deletion: every key of the resource stops working before the object is gone."""
        async with self._locks.hold(ref.key):
            count = await self._db.revoke_keys(ref.managed_by, utcnow())
        self._locks.forget(ref.key)
        self._statuses.forget(ref.key)
        return count

    # -- internals ------------------------------------------------------------------------

    async def _reconcile(
        self, ref: ObjectRef, spec: ApiKeySpec, status: ApiKeyStatus
    ) -> ApiKeyStatus:
        now = utcnow()
        secret_name = spec.secret_name_for(ref.name)
        existing = await self._kube.get("v1", "Secret", ref.namespace, secret_name)
        owned = existing if existing is not None and self._owned(existing, ref) else None
        if existing is not None and owned is None and not self._previous_incarnation(existing, ref):
            raise InvalidSpec(
                "SecretConflict",
                f"Secret {secret_name} exists and does not belong to this ApiKey; "
                "set spec.secretName to another name",
            )
        key, key_id, token, minted = await self._material(ref, spec, owned)

        manifest = build_key_secret(
            name=secret_name,
            namespace=ref.namespace,
            apikey=ref.name,
            key=key,
            key_id=key_id,
            rotation_token=token,
            base_url=self._settings.openai_base_url,
        )
        kopf.adopt(manifest, owner=dict(ref.body))  # type: ignore[arg-type]
        if owned is None or not _secret_matches(owned, manifest):
            try:
                await self._kube.apply(manifest)
            except Conflict as exc:
                raise Unavailable("kubernetes", str(exc), delay=1) from exc
            if owned is not None and minted is None:
                metrics.DRIFT_REPAIRS.labels("secret").inc()
                self._events(
                    ref.body,
                    "Warning",
                    "DriftRepaired",
                    f"Secret {secret_name} was changed; restored",
                )

        grace = (
            spec.rotation.grace_period_seconds
            if spec.rotation and spec.rotation.grace_period_seconds is not None
            else self._settings.rotation_grace_seconds
        )
        desired = desired_row(ref, spec, key_id, key, self._settings.pepper)
        try:
            plan = await self._db.plan_keys(
                ref.managed_by,
                lambda rows: plan_key_rows(
                    rows, desired, now=now, grace_end=now + timedelta(seconds=grace)
                ),
            )
        except Duplicate as exc:
            raise InvalidSpec(
                "KeyInUse", "this key is already registered at the gateway by someone else"
            ) from exc
        shown = str(desired["key_prefix"])
        self._report(ref, status, plan, minted, secret_name, shown)

        ready, reason, message = (True, "KeyActive", f"Key {shown}… is in Secret {secret_name}")
        if spec.disabled:
            ready, reason, message = False, "Disabled", "The key is disabled (spec.disabled)"
        elif spec.expires_at is not None and spec.expires_at <= now:
            ready, reason = False, "Expired"
            message = f"The key expired at {format_time(spec.expires_at)}"
        new = ApiKeyStatus(
            observed_generation=ref.generation,
            key_id=str(plan.current_id),
            key_prefix=shown,
            secret_name=secret_name,
            last_rotation_time=now if minted == "rotated" else status.last_rotation_time,
            keys_in_grace=len(plan.in_grace) or None,
            conditions=set_condition(
                status.conditions, "Ready", ready, reason, message, ref.generation, now
            ),
        )
        await self._statuses.write(ref, new)
        return new

    @staticmethod
    def _owned(secret: dict[str, Any], ref: ObjectRef) -> bool:
        owners = (secret.get("metadata") or {}).get("ownerReferences") or []
        return any(o.get("uid") == ref.uid for o in owners)

    @staticmethod
    def _previous_incarnation(secret: dict[str, Any], ref: ObjectRef) -> bool:
        """Written by us for an earlier ApiKey of the same name (garbage not yet collected)."""
        labels = (secret.get("metadata") or {}).get("labels") or {}
        return labels.get(APIKEY_LABEL) == ref.name and all(
            labels.get(k) == v for k, v in MANAGED_BY.items()
        )

    async def _material(
        self, ref: ObjectRef, spec: ApiKeySpec, owned: dict[str, Any] | None
    ) -> tuple[str, str, str, str | None]:
        """(key, key id, rotation token, why a new key was taken or None)."""
        annotations = ((owned or {}).get("metadata") or {}).get("annotations") or {}
        have_key = secret_value(owned, KEY_FIELD)
        have_id = annotations.get(KEY_ID_ANNOTATION)
        if spec.existing_secret is not None:
            ref_ = spec.existing_secret
            user = await self._kube.get("v1", "Secret", ref.namespace, ref_.name)
            if user is None:
                raise Waiting(
                    "SecretNotFound", f"Secret {ref_.name} (spec.existingSecret) does not exist"
                )
            key = secret_value(user, ref_.key)
            if key is None:
                raise InvalidSpec(
                    "SecretKeyMissing", f"Secret {ref_.name} has no field {ref_.key!r}"
                )
            key = key.strip()
            if len(key) < MIN_USER_KEY_LENGTH or any(c.isspace() for c in key):
                raise InvalidSpec(
                    "KeyTooWeak",
                    f"the key in Secret {ref_.name} must have at least {MIN_USER_KEY_LENGTH} "
                    "characters and no spaces",
                )
            if have_key == key and _valid_uuid(have_id):
                return key, str(have_id), "", None
            return key, str(uuid.uuid4()), "", "imported"
        token = spec.rotation.token if spec.rotation else ""
        if owned is not None and _valid_generated(have_key) and _valid_uuid(have_id):
            assert have_key is not None
            if annotations.get(ROTATION_TOKEN_ANNOTATION, "") == token:
                return have_key, str(have_id), token, None
            metrics.KEYS_MINTED.labels("rotated").inc()
            return mint_key(), str(uuid.uuid4()), token, "rotated"
        reason = "replaced" if owned is not None or ref.status().get("keyId") else "created"
        metrics.KEYS_MINTED.labels(reason).inc()
        return mint_key(), str(uuid.uuid4()), token, reason

    def _report(
        self,
        ref: ObjectRef,
        status: ApiKeyStatus,
        plan: RowPlan,
        minted: str | None,
        secret_name: str,
        shown: str,
    ) -> None:
        prefix = shown + "…"
        until = min(plan.in_grace) if plan.in_grace else None
        grace_note = f"; the previous key works until {format_time(until)}" if until else ""
        if minted == "created":
            self._events(
                ref.body, "Normal", "KeyCreated", f"Generated {prefix} into Secret {secret_name}"
            )
        elif minted == "rotated":
            self._events(ref.body, "Normal", "KeyRotated", f"Rotated to {prefix}{grace_note}")
        elif minted == "replaced":
            self._events(
                ref.body,
                "Warning",
                "KeyReplaced",
                f"Secret {secret_name} had no usable key; generated {prefix}{grace_note}",
            )
        elif minted == "imported":
            self._events(
                ref.body,
                "Normal",
                "KeyImported",
                f"Registered {prefix} from spec.existingSecret{grace_note}",
            )
        hand_edit = status.observed_generation == ref.generation and minted is None
        for note in plan.notes:
            if note == "inserted" and minted is None:
                metrics.DRIFT_REPAIRS.labels("key_row").inc()
                self._events(
                    ref.body,
                    "Warning",
                    "DriftRepaired",
                    f"The gateway row of {prefix} was missing; restored",
                )
            elif note.startswith("updated:") and hand_edit and status.key_id:
                metrics.DRIFT_REPAIRS.labels("key_row").inc()
                self._events(
                    ref.body,
                    "Warning",
                    "DriftRepaired",
                    f"The gateway row of {prefix} was edited ({note[8:]}); restored",
                )
            elif note == "revoked":
                self._events(
                    ref.body,
                    "Normal",
                    "PreviousKeyRevoked",
                    "A previous key's grace period ended; revoked",
                )

    async def _failed(self, ref: ObjectRef, status: ApiKeyStatus, err: ReconcileError) -> None:
        conditions = set_condition(
            status.conditions, "Ready", False, err.reason, err.message, ref.generation
        )
        if ready_changed(status.conditions, conditions):
            self._events(ref.body, "Warning", err.reason, err.message)
        new = status.model_copy(update={"conditions": conditions})
        try:
            await self._statuses.write(ref, new)
        except (Unavailable, Conflict) as exc:
            logger.warning("could not write the status of %s/%s: %s", ref.namespace, ref.name, exc)


def _secret_matches(current: dict[str, Any], desired: dict[str, Any]) -> bool:
    """Everything we set is already there (other fields, e.g. a user's labels, may be extra)."""
    cur_meta, want_meta = current.get("metadata") or {}, desired["metadata"]
    for field in ("labels", "annotations"):
        have = cur_meta.get(field) or {}
        if any(have.get(k) != v for k, v in want_meta[field].items()):
            return False
    owners = {o.get("uid") for o in cur_meta.get("ownerReferences") or []}
    if {o["uid"] for o in want_meta.get("ownerReferences") or []} != owners:
        return False
    same_data: bool = (current.get("data") or {}) == desired["data"]
    return same_data and current.get("type") == desired["type"]
