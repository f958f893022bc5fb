"""The pure decisions of the services: which rows to write, progress, names, URLs."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from tollgate_operator.ollama import PullProgress, normalize_tag
from tollgate_operator.resources import (
    ApiKeySpec,
    ModelAliasSpec,
    ObjectRef,
    OllamaPoolSpec,
    PullState,
    ReplicaPull,
)
from tollgate_operator.services.aliases import (
    AliasTaken,
    Observation,
    PullMemory,
    desired_model_row,
    plan_model_row,
    routing_of,
)
from tollgate_operator.services.apikeys import desired_row, plan_key_rows
from tollgate_operator.services.pools import backend_url
from tollgate_operator.settings import Settings
from tollgate_schema.keys import hash_key, mint_key

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
GRACE_END = NOW + timedelta(minutes=10)
REF = ObjectRef.of(
    "apikeys", {"metadata": {"namespace": "team", "name": "app", "uid": "u1", "generation": 1}}
)


def key_row(**spec: Any) -> dict[str, Any]:
    return desired_row(REF, ApiKeySpec.model_validate(spec), str(uuid.uuid4()), mint_key(), b"p")


def test_desired_row_maps_the_spec() -> None:
    row = desired_row(
        REF,
        ApiKeySpec.model_validate(
            {
                "owner": "o",
                "app": "a",
                "allowedModels": ["gpt-*", "embed"],
                "limits": {"requestsPerMinute": 5, "tokensPerMinute": 100, "concurrency": 2},
                "monthlyBudget": "12.5",
                "expiresAt": "2030-01-01T00:00:00Z",
                "disabled": True,
                "priority": "batch",
            }
        ),
        "00000000-0000-0000-0000-000000000001",
        "tg-abcdefghijklmnopqrstuvwxyz0123456789",
        b"pepper",
    )
    assert row["allowed_models"] == "gpt-*,embed"
    assert (row["rate_limit_rpm"], row["tpm_limit"], row["concurrency_limit"]) == (5, 100, 2)
    assert row["monthly_budget"] == Decimal("12.5")
    assert row["expires_at"] == datetime(2030, 1, 1, tzinfo=UTC)
    assert row["disabled"] is True
    assert row["priority"] == "batch"
    assert row["revoked_at"] is None
    assert row["key_hash"] == hash_key("tg-abcdefghijklmnopqrstuvwxyz0123456789", b"pepper")
    assert row["key_prefix"] == "tg-abcdefgh"
    assert row["managed_by"] == "operator:team/app"
    assert row["name"] == "team/app"


def test_a_new_key_is_inserted() -> None:
    desired = key_row()
    plan = plan_key_rows([], desired, now=NOW, grace_end=GRACE_END)
    assert plan.inserts == [desired]
    assert plan.current_id == desired["id"]
    assert not plan.updates


def test_an_unchanged_key_writes_nothing() -> None:
    desired = key_row(owner="o")
    plan = plan_key_rows([dict(desired)], desired, now=NOW, grace_end=GRACE_END)
    assert plan.empty


def test_hand_edits_are_undone() -> None:
    desired = key_row(limits={"requestsPerMinute": 1})
    edited = {**desired, "rate_limit_rpm": 1000, "revoked_at": NOW, "key_hash": "x" * 64}
    plan = plan_key_rows([edited], desired, now=NOW, grace_end=GRACE_END)
    ((row_id, changes),) = plan.updates
    assert row_id == desired["id"]
    assert changes == {"rate_limit_rpm": 1, "revoked_at": None, "key_hash": desired["key_hash"]}


def test_previous_keys_get_the_grace_period_then_are_revoked() -> None:
    old = key_row(limits={"requestsPerMinute": 5})
    new = key_row(limits={"requestsPerMinute": 7})
    plan = plan_key_rows([old], new, now=NOW, grace_end=GRACE_END)
    assert plan.inserts == [new]
    ((row_id, changes),) = plan.updates
    assert row_id == old["id"]
    assert changes == {"expires_at": GRACE_END, "rate_limit_rpm": 7}
    assert plan.in_grace == [GRACE_END]

    # A later pass never extends the grace period...
    in_grace = {**old, **changes}
    later = NOW + timedelta(minutes=5)
    plan = plan_key_rows([in_grace, new], new, now=later, grace_end=later + timedelta(minutes=10))
    assert plan.empty
    # ...and revokes the key once it is over.
    after = GRACE_END + timedelta(seconds=1)
    plan = plan_key_rows([in_grace, new], new, now=after, grace_end=after + timedelta(minutes=10))
    assert plan.updates == [(old["id"], {"revoked_at": after})]
    assert plan.notes == ["revoked"]


def test_revoked_keys_stay_revoked() -> None:
    old = {**key_row(), "revoked_at": NOW - timedelta(days=1)}
    new = key_row()
    plan = plan_key_rows([old, new], new, now=NOW, grace_end=GRACE_END)
    assert plan.empty


def test_a_key_that_comes_back_reuses_its_row() -> None:
    desired = key_row()
    earlier = {**desired, "id": uuid.uuid4(), "revoked_at": NOW}
    plan = plan_key_rows([earlier], desired, now=NOW, grace_end=GRACE_END)
    assert plan.current_id == earlier["id"]
    assert plan.updates == [(earlier["id"], {"revoked_at": None})]


def test_an_expiry_in_the_spec_caps_previous_keys_too() -> None:
    soon = NOW + timedelta(minutes=1)
    old = key_row()
    new = key_row(expiresAt=soon.isoformat())
    plan = plan_key_rows([old], new, now=NOW, grace_end=GRACE_END)
    assert dict(plan.updates)[old["id"]]["expires_at"] == soon


ALIAS_REF = ObjectRef.of(
    "modelaliases", {"metadata": {"namespace": "ml", "name": "chat", "uid": "u2"}}
)
ALIAS_SPEC = ModelAliasSpec.model_validate(
    {
        "alias": "Chat:Latest",
        "model": "llama3.2:1b",
        "poolRef": {"name": "p"},
        "prices": {"inputPerMillionTokens": "0.1", "outputPerMillionTokens": "0.4"},
    }
)


def test_an_alias_is_disabled_until_its_model_is_everywhere() -> None:
    row = desired_model_row(ALIAS_REF, ALIAS_SPEC, "http://p:11434", None)
    assert row["enabled"] is False
    assert row["backend_tag"] == "llama3.2:1b"
    row = desired_model_row(ALIAS_REF, ALIAS_SPEC, "http://p:11434", "llama3.2:1b")
    assert row["enabled"] is True
    assert row["input_price_per_mtok"] == Decimal("0.1")
    # While a new tag downloads, the previous one keeps serving.
    switching = ALIAS_SPEC.model_copy(update={"model": "llama3.2:3b"})
    row = desired_model_row(ALIAS_REF, switching, "http://p:11434", "llama3.2:1b")
    assert (row["enabled"], row["backend_tag"]) == (True, "llama3.2:1b")


def _pod(name: str, ip: str, *, ready: bool = True, deleting: bool = False) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "uid": name}
    if deleting:
        meta["deletionTimestamp"] = "2026-12-01T12:00:00Z"
    return {
        "metadata": meta,
        "status": {
            "phase": "Running",
            "podIP": ip,
            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
        },
    }


def test_the_row_lists_ready_replicas_whose_pull_finished() -> None:
    pods = [
        _pod("p-0", "10.0.0.1"),
        _pod("p-1", "10.0.0.2"),  # still pulling
        _pod("p-2", "10.0.0.3", deleting=True),  # scaled down: out before it goes
        _pod("p-3", "10.0.0.4", ready=False),
    ]
    entries = {
        "p-0": ReplicaPull(name="p-0", state=PullState.PRESENT),
        "p-1": ReplicaPull(name="p-1", state=PullState.PULLING),
        "p-2": ReplicaPull(name="p-2", state=PullState.PRESENT),
        "p-3": ReplicaPull(name="p-3", state=PullState.WAITING),
    }
    pool = OllamaPoolSpec.model_validate({"routing": {"policy": "leastLoad"}})
    seen = Observation(pool, "http://p:11434", pods, entries, [])
    routing = routing_of(ALIAS_REF, ALIAS_SPEC, seen, "llama3.2:1b", 11434)
    assert routing.replicas == [{"name": "p-0", "url": "http://10.0.0.1:11434"}]
    assert routing.routing == {
        "pool": "ml/p",
        "policy": "leastLoad",
        "prefix_chars": 256,
        "slots": 1,
    }
    row = desired_model_row(ALIAS_REF, ALIAS_SPEC, "http://p:11434", "llama3.2:1b", routing)
    assert row["replicas"] == routing.replicas
    # While the tag switches, the pool's Service serves (which replicas hold the old tag
    # is not observed).
    switching = ALIAS_SPEC.model_copy(update={"model": "llama3.2:3b"})
    assert routing_of(ALIAS_REF, switching, seen, "llama3.2:1b", 11434).replicas is None
    # A pass that did not observe the Pods leaves the columns alone.
    assert "replicas" not in desired_model_row(ALIAS_REF, ALIAS_SPEC, "http://p:11434", None)


def test_model_rows_are_inserted_updated_and_renamed() -> None:
    desired = desired_model_row(ALIAS_REF, ALIAS_SPEC, "http://p:11434", "llama3.2:1b")
    plan = plan_model_row([], desired)
    assert plan.inserts[0]["alias"] == "Chat:Latest"
    row = {**plan.inserts[0]}
    assert plan_model_row([row], desired).empty
    renamed = {**desired, "alias": "chat"}
    plan = plan_model_row([row], renamed)
    assert plan.updates == [(row["id"], {"alias": "chat"})]
    assert plan_model_row([row], desired, create=False).empty


def test_an_alias_of_someone_else_is_a_conflict() -> None:
    desired = desired_model_row(ALIAS_REF, ALIAS_SPEC, "http://p:11434", None)
    theirs = {**desired, "id": uuid.uuid4(), "managed_by": None}
    with pytest.raises(AliasTaken):
        plan_model_row([theirs], desired)


def test_pull_progress_sums_layers() -> None:
    progress = PullProgress()
    progress.update({"status": "pulling manifest"})
    assert progress.percent == 0
    progress.update({"status": "pulling a", "digest": "sha256:a", "total": 300})
    progress.update({"status": "pulling a", "digest": "sha256:a", "total": 300, "completed": 150})
    progress.update({"status": "pulling b", "digest": "sha256:b", "total": 100, "completed": 100})
    assert (progress.completed, progress.total, progress.percent) == (250, 400, 62)
    progress.update({"status": "success"})
    assert progress.status == "success"


def test_failed_pulls_back_off() -> None:
    memory = PullMemory(max_delay=20)
    assert memory.due("pod", 0)
    memory.failed("pod", "boom", 0)
    assert not memory.due("pod", 1)
    assert memory.due("pod", 5)
    for _ in range(10):
        memory.failed("pod", "boom", 0)
    assert memory.failures["pod"][1] == 20
    memory.succeeded("pod")
    assert memory.due("pod", 0)
    assert memory.next_retry(0) is None


@pytest.mark.parametrize(
    ("name", "canonical"),
    [
        ("llama3", "llama3:latest"),
        ("llama3:8b", "llama3:8b"),
        ("library/llama3", "llama3:latest"),
        ("registry.ollama.ai/library/qwen2.5:0.5b", "qwen2.5:0.5b"),
        ("hf.co/org/repo", "hf.co/org/repo:latest"),
        ("hf.co/org/repo:Q4_K_M", "hf.co/org/repo:Q4_K_M"),
    ],
)
def test_model_names_are_compared_in_canonical_form(name: str, canonical: str) -> None:
    assert normalize_tag(name) == canonical


def test_backend_url_template() -> None:
    default = Settings().backend_url_template
    assert backend_url(default, "p", "ml", 11434) == "http://p.ml.svc.cluster.local:11434"
    assert (
        backend_url("http://{cluster_ip}:{port}", "p", "ml", 1, "10.0.0.1") == "http://10.0.0.1:1"
    )
    with pytest.raises(ValueError, match="backend_url_template"):
        Settings(backend_url_template="http://{host}")


def test_a_supplied_key_is_shown_as_a_fingerprint_of_its_hash() -> None:
    user_key = "my-own-key-0123456789"  # 21 characters: 11 of them would be half of it
    spec = ApiKeySpec.model_validate({"existingSecret": {"name": "mine", "key": "token"}})
    key_id = "00000000-0000-0000-0000-000000000002"
    row = desired_row(REF, spec, key_id, user_key, b"pepper-" + b"x" * 16)
    shown = row["key_prefix"]
    assert shown.startswith("fp-") and len(shown) == 13
    # No run of the key's characters, not even its first three.
    assert not any(user_key[i : i + 3] in shown for i in range(len(user_key) - 2))
    # A function of the peppered hash: stable, and different under another pepper.
    assert desired_row(REF, spec, key_id, user_key, b"pepper-" + b"x" * 16)["key_prefix"] == shown
    assert desired_row(REF, spec, key_id, user_key, b"other-" + b"y" * 16)["key_prefix"] != shown
    # A generated key keeps its short, non-secret prefix.
    generated = mint_key()
    assert desired_row(REF, ApiKeySpec(), key_id, generated, b"p")["key_prefix"] == generated[:11]


def test_the_operator_refuses_to_start_without_a_pepper() -> None:
    def run(**env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "tollgate_operator"],
            env={
                **{k: v for k, v in os.environ.items() if not k.startswith("TOLLGATE_")},
                # Nothing listens here: a start that gets past the check fails on Postgres.
                "POSTGRES_DSN": "postgresql://nobody@127.0.0.1:1/none",
                "TOLLGATE_STARTUP_DB_TIMEOUT_SECONDS": "0",
                "TOLLGATE_METRICS_PORT": "0",
                **env,
            },
            capture_output=True,
            text=True,
            timeout=60,
        )

    for pepper in ("", "too-short"):
        refused = run(TOLLGATE_KEY_PEPPER=pepper)
        assert refused.returncode == 2, refused.stderr
        assert "refusing to start: TOLLGATE_KEY_PEPPER" in refused.stderr
    dev = run(TOLLGATE_DEV_MODE="true")
    assert "TOLLGATE_KEY_PEPPER" not in dev.stderr
    assert dev.returncode == 3  # past the check: stopped by the unreachable database
    assert "Postgres is unreachable" in dev.stderr
    peppered = run(TOLLGATE_KEY_PEPPER="p" * 32)
    assert peppered.returncode == 3 and "TOLLGATE_KEY_PEPPER" not in peppered.stderr
