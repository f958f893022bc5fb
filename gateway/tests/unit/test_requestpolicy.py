"""The request policy's pure core: caps, defaults, fixed values and the allow-list per API."""

from __future__ import annotations

from typing import Any

import pytest

from tollgate_gateway.requestpolicy import Api, Mode, PolicyViolation, RequestPolicy, apply

CAPPED = RequestPolicy(max_output_tokens=256, default_output_tokens=64)


def test_an_empty_policy_changes_nothing() -> None:
    body: dict[str, Any] = {"model": "m", "max_tokens": 10_000, "keep_alive": -1}
    applied = apply(RequestPolicy(), Api.OPENAI, body)
    assert body == {"model": "m", "max_tokens": 10_000, "keep_alive": -1}
    assert applied.clamped == []


@pytest.mark.parametrize(
    ("api", "field"),
    [
        (Api.OPENAI, "max_tokens"),
        (Api.OPENAI, "max_completion_tokens"),
        (Api.RESPONSES, "max_output_tokens"),
        (Api.MESSAGES, "max_tokens"),
    ],
)
def test_output_over_the_cap_is_clamped(api: Api, field: str) -> None:
    body: dict[str, Any] = {field: 5_000}
    applied = apply(CAPPED, api, body)
    assert body[field] == 256
    assert applied.clamped == [field]


def test_output_under_the_cap_is_kept() -> None:
    body: dict[str, Any] = {"max_tokens": 100}
    assert apply(CAPPED, Api.OPENAI, body).clamped == []
    assert body == {"max_tokens": 100}


@pytest.mark.parametrize(
    ("api", "field"),
    [(Api.OPENAI, "max_tokens"), (Api.RESPONSES, "max_output_tokens")],
)
def test_the_default_is_set_when_the_client_sends_none(api: Api, field: str) -> None:
    body: dict[str, Any] = {"model": "m"}
    apply(CAPPED, api, body)
    assert body[field] == 64


def test_without_a_default_the_cap_is_the_default() -> None:
    body: dict[str, Any] = {}
    apply(RequestPolicy(max_output_tokens=32), Api.OPENAI, body)
    assert body == {"max_tokens": 32}


def test_reject_mode_names_the_field() -> None:
    policy = RequestPolicy(max_output_tokens=256, mode=Mode.REJECT)
    with pytest.raises(PolicyViolation) as info:
        apply(policy, Api.MESSAGES, {"max_tokens": 257})
    assert info.value.param == "max_tokens"
    assert "at most 256" in str(info.value)


def test_native_num_predict_is_capped_and_defaulted() -> None:
    body: dict[str, Any] = {"options": {"num_predict": 9_999, "temperature": 0.2}}
    applied = apply(CAPPED, Api.NATIVE, body)
    assert body["options"] == {"num_predict": 256, "temperature": 0.2}
    assert applied.clamped == ["options.num_predict"]
    bare: dict[str, Any] = {"model": "m"}
    apply(CAPPED, Api.NATIVE, bare)
    assert bare["options"] == {"num_predict": 64}


def test_unbounded_num_predict_counts_as_over_the_cap() -> None:
    body: dict[str, Any] = {"options": {"num_predict": -1}}
    apply(CAPPED, Api.NATIVE, body)
    assert body["options"]["num_predict"] == 256


def test_num_ctx_cap_and_fixed_value() -> None:
    capped: dict[str, Any] = {"options": {"num_ctx": 131_072}}
    apply(RequestPolicy(max_num_ctx=8192), Api.NATIVE, capped)
    assert capped["options"]["num_ctx"] == 8192
    small: dict[str, Any] = {"options": {"num_ctx": 2048}}
    apply(RequestPolicy(max_num_ctx=8192), Api.NATIVE, small)
    assert small["options"]["num_ctx"] == 2048
    fixed: dict[str, Any] = {"options": {"num_ctx": 2048}}
    applied = apply(RequestPolicy(num_ctx=4096), Api.NATIVE, fixed)
    assert fixed["options"]["num_ctx"] == 4096
    assert applied.clamped == ["options.num_ctx"]
    embed: dict[str, Any] = {"input": "x"}
    apply(RequestPolicy(num_ctx=4096), Api.NATIVE_EMBED, embed)
    assert embed["options"] == {"num_ctx": 4096}


@pytest.mark.parametrize("asked", [-1, "24h", 0, "5m"])
def test_keep_alive_is_the_gateways_whatever_the_client_asks(asked: Any) -> None:
    body: dict[str, Any] = {"keep_alive": asked}
    applied = apply(RequestPolicy(keep_alive="5m"), Api.NATIVE, body)
    assert body["keep_alive"] == "5m"
    assert applied.clamped == ([] if asked == "5m" else ["keep_alive"])
    absent: dict[str, Any] = {}
    apply(RequestPolicy(keep_alive="5m"), Api.NATIVE, absent)
    assert absent["keep_alive"] == "5m"


def test_options_outside_the_allow_list_are_dropped_or_refused() -> None:
    policy = RequestPolicy(allowed_options=frozenset({"temperature", "top_p"}))
    body: dict[str, Any] = {"options": {"temperature": 0.1, "num_gpu": 99, "num_thread": 64}}
    applied = apply(policy, Api.NATIVE, body)
    assert body["options"] == {"temperature": 0.1}
    assert applied.dropped_options == ["num_gpu", "num_thread"]
    strict = RequestPolicy(allowed_options=frozenset({"temperature"}), mode=Mode.REJECT)
    with pytest.raises(PolicyViolation) as info:
        apply(strict, Api.NATIVE, {"options": {"num_gpu": 99}})
    assert info.value.param == "options.num_gpu"


def test_from_the_crd_shape() -> None:
    policy = RequestPolicy.from_dict(
        {
            "maxOutputTokens": 512,
            "defaultOutputTokens": 128,
            "maxNumCtx": 8192,
            "keepAlive": "10m",
            "allowedOptions": ["temperature"],
            "mode": "reject",
        }
    )
    assert policy == RequestPolicy(
        max_output_tokens=512,
        default_output_tokens=128,
        max_num_ctx=8192,
        keep_alive="10m",
        allowed_options=frozenset({"temperature"}),
        mode=Mode.REJECT,
    )
    assert RequestPolicy.from_dict(None).empty


@pytest.mark.parametrize(
    "raw",
    [
        {"maxOutputTokens": 0},
        {"maxOutputTokens": 10, "defaultOutputTokens": 20},
        {"numCtx": 4096, "maxNumCtx": 8192},
        {"mode": "sometimes"},
    ],
)
def test_invalid_policies_are_refused(raw: dict[str, Any]) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - each case has its own message
        RequestPolicy.from_dict(raw)


@pytest.mark.parametrize(
    ("raw", "sent"), [("-1", -1), ("300", 300), ("0", 0), ("5m", "5m"), ("1h30m", "1h30m")]
)
def test_keep_alive_goes_upstream_as_ollama_parses_it(raw: str, sent: Any) -> None:
    """Ollama reads a string keep_alive as a Go duration, where "-1" or "300" is no
    duration: whole seconds go as a number."""
    body: dict[str, Any] = {}
    apply(RequestPolicy.from_dict({"keepAlive": raw}), Api.NATIVE, body)
    assert body["keep_alive"] == sent


def test_the_allow_list_governs_num_ctx_unless_the_policy_caps_it() -> None:
    only = RequestPolicy(allowed_options=frozenset({"temperature"}))
    body: dict[str, Any] = {"options": {"num_ctx": 131_072, "num_predict": 10}}
    assert apply(only, Api.NATIVE, body).dropped_options == ["num_ctx", "num_predict"]
    assert body["options"] == {}
    capped = RequestPolicy(
        allowed_options=frozenset({"temperature"}), max_num_ctx=4096, max_output_tokens=64
    )
    body = {"options": {"num_ctx": 131_072, "num_predict": 10}}
    assert apply(capped, Api.NATIVE, body).dropped_options == []
    assert body["options"] == {"num_ctx": 4096, "num_predict": 10}


def test_a_count_sent_as_a_float_is_capped_too() -> None:
    """Ollama takes 131072.0 for an integer option: it is no way around the cap."""
    body: dict[str, Any] = {"options": {"num_ctx": 131_072.0}}
    apply(RequestPolicy(max_num_ctx=8192), Api.NATIVE_EMBED, body)
    assert body["options"]["num_ctx"] == 8192
    strict = RequestPolicy(max_num_ctx=8192, mode=Mode.REJECT)
    with pytest.raises(PolicyViolation):
        apply(strict, Api.NATIVE, {"options": {"num_ctx": 9000.0}})


@pytest.mark.parametrize(
    ("api", "body", "bound"),
    [
        (Api.OPENAI, {"max_tokens": 5_000}, 256),
        (Api.OPENAI, {"max_tokens": 100, "max_completion_tokens": 5_000}, 100),
        (Api.OPENAI, {"max_completion_tokens": 5_000}, 256),
        (Api.OPENAI, {}, 64),
        (Api.RESPONSES, {"max_output_tokens": 200}, 200),
        (Api.NATIVE, {"options": {"num_predict": -1}}, 256),
        (Api.NATIVE, {}, 64),
    ],
)
def test_the_output_bound_after_the_policy_is_reported(
    api: Api, body: dict[str, Any], bound: int
) -> None:
    """What admission reserves for: the bound the body now asks for."""
    assert apply(CAPPED, api, body).output_tokens == bound


def test_no_output_bound_is_reported_without_an_output_policy() -> None:
    body: dict[str, Any] = {"max_tokens": 5_000, "options": {"num_predict": 9}}
    assert apply(RequestPolicy(max_num_ctx=8), Api.OPENAI, body).output_tokens is None
    assert apply(RequestPolicy(max_num_ctx=8), Api.NATIVE, body).output_tokens is None


@pytest.mark.parametrize(
    "raw",
    [
        {"keepAlive": "forever"},
        {"keepAlive": True},
        {"allowedOptions": "temperature"},
        {"allowedOptions": ["Temperature"]},
        {"maxNumCtx": True},
    ],
)
def test_invalid_keep_alive_and_options_are_refused(raw: dict[str, Any]) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - each case has its own message
        RequestPolicy.from_dict(raw)


def test_from_the_row_the_operator_writes() -> None:
    """operator/tests/test_request_policy_row.py writes this row from a ModelAlias."""
    row = {
        "max_output_tokens": 512,
        "num_ctx": 4096,
        "keep_alive": "-1",
        "allowed_options": ["temperature", "top_p"],
        "mode": "reject",
    }
    assert RequestPolicy.from_dict(row) == RequestPolicy(
        max_output_tokens=512,
        num_ctx=4096,
        keep_alive=-1,
        allowed_options=frozenset({"temperature", "top_p"}),
        mode=Mode.REJECT,
    )
