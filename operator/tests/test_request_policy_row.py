"""A ModelAlias's spec.requestPolicy in its gateway row, in the shape the gateway reads
(gateway/tests/unit/test_requestpolicy.py reads the same row)."""

from __future__ import annotations

import uuid

from tollgate_operator.resources import ModelAliasSpec, ObjectRef
from tollgate_operator.services.aliases import desired_model_row, plan_model_row

REF = ObjectRef.of("modelaliases", {"metadata": {"namespace": "ml", "name": "c", "uid": "u"}})
BASE = {"alias": "chat", "model": "llama3.2:1b", "poolRef": {"name": "p"}}


def spec(**fields: object) -> ModelAliasSpec:
    return ModelAliasSpec.model_validate({**BASE, **fields})


def test_the_row_holds_the_policy_in_snake_case_without_nulls() -> None:
    policy = {
        "maxOutputTokens": 512,
        "numCtx": 4096,
        "keepAlive": "-1",
        "allowedOptions": ["top_p", "temperature", "top_p"],
        "mode": "reject",
    }
    row = desired_model_row(REF, spec(requestPolicy=policy), "http://p:11434", "llama3.2:1b")
    assert row["request_policy"] == {
        "max_output_tokens": 512,
        "num_ctx": 4096,
        "keep_alive": "-1",
        "allowed_options": ["temperature", "top_p"],
        "mode": "reject",
    }


def test_no_policy_is_null_and_a_removed_policy_clears_the_row() -> None:
    without = desired_model_row(REF, spec(), "http://p:11434", "llama3.2:1b")
    assert without["request_policy"] is None
    capped = desired_model_row(
        REF, spec(requestPolicy={"maxOutputTokens": 64}), "http://p:11434", "llama3.2:1b"
    )
    assert capped["request_policy"] == {"max_output_tokens": 64, "mode": "clamp"}
    row = {"id": uuid.uuid4(), **capped}
    assert plan_model_row([row], capped).empty
    plan = plan_model_row([row], without)
    assert plan.updates == [(row["id"], {"request_policy": None})]
