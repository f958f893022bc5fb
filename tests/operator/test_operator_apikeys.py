"""ApiKey resources, end to end: the operator process, the API server, Postgres, a gateway.

Keys are used with the openai client against a real gateway that shares the operator's
pepper. Every wait is a deadline on an observable outcome.
"""

from __future__ import annotations

import base64
import re
import uuid
from typing import Any

import anthropic
import openai
import psycopg
import pytest
from kubernetes import client
from operator_harness import Kube, OperatorProcess, wait_for

from tollgate_dev.servers.programs import GatewayProcess, StandinProcess

pytestmark = pytest.mark.cluster

ALIAS = "op-keys-chat"


@pytest.fixture(scope="module")
def chat_alias(db: psycopg.Connection[Any], standin: StandinProcess) -> str:
    """An alias (made by hand, not by a ModelAlias) on the session's stand-in."""
    db.execute(
        "INSERT INTO models (id, alias, backend_tag, backend_url) VALUES (%s, %s, %s, %s) "
        "ON CONFLICT (alias) DO NOTHING",
        (uuid.uuid4(), ALIAS, "llama3:8b", standin.url),
    )
    return ALIAS


@pytest.fixture
def gateway(op_gateway: GatewayProcess, operator: OperatorProcess) -> GatewayProcess:
    return op_gateway


def api_key(namespace: str, name: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "tollgate.dev/v1alpha1",
        "kind": "ApiKey",
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
    }


def openai_client(gateway: GatewayProcess, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.url + "/v1", api_key=key, max_retries=0, timeout=10)


def works(gateway: GatewayProcess, key: str) -> bool:
    """True if the gateway accepts the key, False on 401."""
    with openai_client(gateway, key) as oai:
        try:
            oai.models.list()
        except openai.AuthenticationError:
            return False
    return True


def chat(gateway: GatewayProcess, key: str) -> int:
    with openai_client(gateway, key) as oai:
        try:
            oai.chat.completions.create(
                model=ALIAS, messages=[{"role": "user", "content": "hi"}], max_tokens=3
            )
        except openai.APIStatusError as exc:
            return exc.status_code
    return 200


def rows(db: psycopg.Connection[Any], namespace: str, name: str) -> list[dict[str, Any]]:
    cursor = db.execute(
        "SELECT id, key_hash, key_prefix, owner, app, allowed_models, rate_limit_rpm, tpm_limit, "
        "concurrency_limit, monthly_budget, priority, expires_at, disabled, revoked_at "
        "FROM api_keys WHERE managed_by = %s ORDER BY created_at",
        (f"operator:{namespace}/{name}",),
    )
    names = [c.name for c in cursor.description or []]
    return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


def events(kube: Kube, namespace: str, name: str) -> list[str]:
    items = kube.core.list_namespaced_event(
        namespace, field_selector=f"involvedObject.name={name}"
    ).items
    return [e.reason for e in items]


@pytest.fixture
def ready_key(
    kube: Kube, namespace: str, gateway: GatewayProcess, chat_alias: str
) -> tuple[str, str]:
    """An ApiKey `app` in a fresh namespace, Ready: (namespace, key)."""
    kube.create(api_key(namespace, "app", owner="team-a", app="billing"))
    wait_for("ApiKey app to be Ready", lambda: kube.ready("apikeys", namespace, "app"))
    secret = kube.secret(namespace, "app-api-key")
    assert secret is not None
    return namespace, secret["api-key"]


def test_apikey_becomes_a_secret_whose_key_works_at_the_gateway(
    kube: Kube, ready_key: tuple[str, str], gateway: GatewayProcess, db: psycopg.Connection[Any]
) -> None:
    namespace, key = ready_key
    secret = kube.secret(namespace, "app-api-key")
    assert secret == {
        "api-key": key,
        "OPENAI_API_KEY": key,
        "OPENAI_BASE_URL": gateway.url + "/v1",
        "ANTHROPIC_API_KEY": key,
        "ANTHROPIC_BASE_URL": gateway.url,
    }
    # what the Anthropic SDK (and Claude Code) read from the environment is enough
    claude = anthropic.Anthropic(
        base_url=secret["ANTHROPIC_BASE_URL"], api_key=secret["ANTHROPIC_API_KEY"], max_retries=0
    )
    reply = claude.messages.create(
        model=ALIAS, max_tokens=3, messages=[{"role": "user", "content": "hi"}]
    )
    assert reply.model == ALIAS and reply.usage.output_tokens > 0
    obj = kube.get("apikeys", namespace, "app")
    status = obj["status"]
    assert status["keyPrefix"] == key[:11]
    assert key not in str(obj)  # status and annotations carry no key material
    (row,) = rows(db, namespace, "app")
    assert str(row["id"]) == status["keyId"]
    assert (row["owner"], row["app"], row["allowed_models"]) == ("team-a", "billing", "*")
    raw = kube.core.read_namespaced_secret("app-api-key", namespace)
    assert raw.metadata.owner_references[0].uid == obj["metadata"]["uid"]

    assert works(gateway, key)
    assert chat(gateway, key) == 200
    assert "KeyCreated" in events(kube, namespace, "app")


def test_spec_changes_reach_the_gateway(
    kube: Kube, ready_key: tuple[str, str], gateway: GatewayProcess, db: psycopg.Connection[Any]
) -> None:
    namespace, key = ready_key
    kube.patch(
        "apikeys",
        namespace,
        "app",
        {
            "limits": {"requestsPerMinute": 1, "tokensPerMinute": 5000, "concurrency": 2},
            "monthlyBudget": "12.5",
            "allowedModels": ["op-keys-*", "other"],
            "owner": "team-b",
            "priority": "batch",
        },
    )
    wait_for("the new spec to be reconciled", lambda: kube.ready("apikeys", namespace, "app"))
    (row,) = rows(db, namespace, "app")
    assert row["priority"] == "batch"
    assert row["rate_limit_rpm"] == 1
    assert (row["tpm_limit"], row["concurrency_limit"]) == (5000, 2)
    assert str(row["monthly_budget"]).startswith("12.5")
    assert (row["allowed_models"], row["owner"]) == ("op-keys-*,other", "team-b")
    # One request per minute: the gateway answers 429 to the next one.
    first = chat(gateway, key)
    assert first in (200, 429)
    assert wait_for("a 429 from the gateway", lambda: chat(gateway, key) == 429, timeout=15)
    # The key itself did not change.
    assert kube.secret(namespace, "app-api-key")["api-key"] == key  # type: ignore[index]

    kube.patch("apikeys", namespace, "app", {"disabled": True})
    wait_for("Ready=False Disabled", lambda: _reason(kube, namespace, "app") == "Disabled")
    assert wait_for("the disabled key to be refused", lambda: not works(gateway, key), timeout=15)


def _reason(kube: Kube, namespace: str, name: str) -> str | None:
    cond = kube.condition(kube.get("apikeys", namespace, name), "Ready")
    return cond["reason"] if cond else None


def test_rotation_keeps_the_old_key_for_the_grace_period(
    kube: Kube, namespace: str, gateway: GatewayProcess, db: psycopg.Connection[Any]
) -> None:
    kube.create(api_key(namespace, "rot", rotation={"token": "one", "gracePeriodSeconds": 8}))
    wait_for("ApiKey rot to be Ready", lambda: kube.ready("apikeys", namespace, "rot"))
    old = kube.secret(namespace, "rot-api-key")["api-key"]  # type: ignore[index]
    old_id = kube.get("apikeys", namespace, "rot")["status"]["keyId"]
    assert works(gateway, old)

    kube.patch("apikeys", namespace, "rot", {"rotation": {"token": "two", "gracePeriodSeconds": 8}})
    new = wait_for(
        "a new key in the Secret",
        lambda: (k := kube.secret(namespace, "rot-api-key")["api-key"]) != old and k,  # type: ignore[index]
    )
    # During the grace period both keys work. (The Secret is written before the row.)
    wait_for("the new key to work", lambda: works(gateway, new), timeout=10)
    assert works(gateway, old)
    status = wait_for("the rotation in status", lambda: kube.ready("apikeys", namespace, "rot"))[
        "status"
    ]
    assert status["keyId"] != old_id
    assert status["keysInGrace"] == 1
    assert status["lastRotationTime"]
    assert "KeyRotated" in events(kube, namespace, "rot")
    # Afterwards only the new one.
    wait_for("the old key to be refused", lambda: not works(gateway, old), timeout=30)
    assert works(gateway, new)

    def old_revoked() -> list[dict[str, Any]] | None:
        found = rows(db, namespace, "rot")
        revoked = all(r["revoked_at"] for r in found if str(r["id"]) == old_id)
        return found if revoked else None

    by_id = {str(r["id"]): r for r in wait_for("the old key to be revoked", old_revoked)}
    assert by_id[old_id]["revoked_at"] is not None
    assert by_id[status["keyId"]]["revoked_at"] is None
    assert len(by_id) == 2


def test_deletion_revokes_the_key(
    kube: Kube, ready_key: tuple[str, str], gateway: GatewayProcess, db: psycopg.Connection[Any]
) -> None:
    namespace, key = ready_key
    assert works(gateway, key)
    kube.delete("apikeys", namespace, "app")
    wait_for("the ApiKey to be gone", lambda: kube.gone("apikeys", namespace, "app"))
    (row,) = rows(db, namespace, "app")
    assert row["revoked_at"] is not None
    assert wait_for("the key to be refused", lambda: not works(gateway, key), timeout=10)


def test_drift_is_repaired(
    kube: Kube, ready_key: tuple[str, str], gateway: GatewayProcess, db: psycopg.Connection[Any]
) -> None:
    namespace, key = ready_key
    (row,) = rows(db, namespace, "app")

    # A row deleted by hand comes back, same id, same key.
    db.execute("DELETE FROM api_keys WHERE id = %s", (row["id"],))
    restored = wait_for("the row to be restored", lambda: rows(db, namespace, "app"))
    assert [r["id"] for r in restored] == [row["id"]]
    assert wait_for("the key to work again", lambda: works(gateway, key), timeout=15)

    # A row edited by hand is put back.
    db.execute(
        "UPDATE api_keys SET rate_limit_rpm = 999, revoked_at = now(), owner = 'mallory' "
        "WHERE id = %s",
        (row["id"],),
    )
    wait_for(
        "the edit to be undone",
        lambda: (
            (r := rows(db, namespace, "app")[0])["revoked_at"] is None
            and r["owner"] == "team-a"
            and r["rate_limit_rpm"] is None
        ),
    )
    assert "DriftRepaired" in events(kube, namespace, "app")

    # A Secret edited by hand is put back (same key).
    kube.core.patch_namespaced_secret(
        "app-api-key",
        namespace,
        {"data": {"OPENAI_BASE_URL": base64.b64encode(b"http://evil/v1").decode()}},
    )
    wait_for(
        "the Secret to be restored",
        lambda: kube.secret(namespace, "app-api-key")["OPENAI_BASE_URL"] == gateway.url + "/v1",  # type: ignore[index]
    )
    assert kube.secret(namespace, "app-api-key")["api-key"] == key  # type: ignore[index]

    # A Secret deleted by hand: the key is lost, so a new one is minted; the old one keeps
    # working for the (default, one hour) grace period: apps may still hold it.
    kube.core.delete_namespaced_secret("app-api-key", namespace)
    new = wait_for(
        "a new Secret",
        lambda: (
            (s := kube.secret(namespace, "app-api-key")) and s["api-key"] != key and s["api-key"]
        ),
    )
    wait_for("the new key to work", lambda: works(gateway, new), timeout=10)
    assert works(gateway, key)
    assert "KeyReplaced" in events(kube, namespace, "app")


def test_a_key_from_an_existing_secret(
    kube: Kube, namespace: str, gateway: GatewayProcess, db: psycopg.Connection[Any]
) -> None:
    user_key = "user-" + uuid.uuid4().hex
    kube.core.create_namespaced_secret(
        namespace,
        client.V1Secret(
            metadata=client.V1ObjectMeta(name="mine"), string_data={"wrong-field": user_key}
        ),
    )
    kube.create(api_key(namespace, "byo", existingSecret={"name": "mine", "key": "token"}))
    # The field is missing: a clear reason, no retry storm.
    cond = wait_for(
        "Ready=False SecretKeyMissing",
        lambda: (
            (c := kube.condition(kube.get("apikeys", namespace, "byo"), "Ready"))
            and c["reason"] == "SecretKeyMissing"
            and c
        ),
    )
    assert cond["status"] == "False"
    assert "token" in cond["message"]
    assert not rows(db, namespace, "byo")

    # Fixing the Secret is enough: the resync picks it up.
    kube.core.patch_namespaced_secret("mine", namespace, {"stringData": {"token": user_key}})
    wait_for("ApiKey byo to be Ready", lambda: kube.ready("apikeys", namespace, "byo"))
    assert kube.secret(namespace, "byo-api-key")["OPENAI_API_KEY"] == user_key  # type: ignore[index]
    assert works(gateway, user_key)
    assert user_key not in str(kube.get("apikeys", namespace, "byo"))

    # The user changes their key: the new one works, the old one for the grace period.
    second = "user-" + uuid.uuid4().hex
    kube.core.patch_namespaced_secret("mine", namespace, {"stringData": {"token": second}})
    wait_for("the new key to be registered", lambda: works(gateway, second), timeout=20)
    assert works(gateway, user_key)
    assert len(rows(db, namespace, "byo")) == 2


KEY_PATTERN = re.compile(r"tg-[A-Za-z0-9_-]{43}")


def test_no_key_material_in_logs_events_or_status(
    operator: OperatorProcess, kube: Kube, ready_key: tuple[str, str]
) -> None:
    """Runs after the others in this module: everything they did left no key behind."""
    namespace, _ = ready_key
    log = operator.log_path.read_text(errors="replace")
    messages = [e.message for e in kube.core.list_namespaced_event(namespace).items]
    assert any(m.startswith("Generated tg-") for m in messages)  # a prefix, not the key
    assert not KEY_PATTERN.search(log)
    for event in kube.core.list_event_for_all_namespaces().items:
        assert not KEY_PATTERN.search(event.message or ""), event.message
    for obj in kube.objects.list_cluster_custom_object("tollgate.dev", "v1alpha1", "apikeys")[
        "items"
    ]:
        assert not KEY_PATTERN.search(str(obj))
