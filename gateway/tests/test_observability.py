"""The access log (one JSON line per proxied request, no key material) and the GenAI
semantic-convention metrics, after a known mix of traffic against a real gateway."""

from __future__ import annotations

import json
import time
from typing import Any

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tollgate_dev.plugins.services import Admin, Gateways
from tollgate_dev.servers.programs import GatewayProcess


@pytest.fixture(scope="module")
def json_gateway(gateways: Gateways, chat_model: str) -> GatewayProcess:
    return gateways.start(TOLLGATE_LOG_JSON="true")


def access_lines(gateway: GatewayProcess, wanted: set[str]) -> dict[str, dict[str, Any]]:
    assert gateway.log_path is not None
    deadline = time.monotonic() + 10
    while True:
        found: dict[str, dict[str, Any]] = {}
        count: dict[str, int] = {}
        for line in gateway.log_path.read_text().splitlines():
            if not line.startswith("{"):
                continue
            entry = json.loads(line)
            if entry.get("logger") == "tollgate_gateway.access" and entry["request_id"] in wanted:
                found[entry["request_id"]] = entry
                count[entry["request_id"]] = count.get(entry["request_id"], 0) + 1
        if set(found) == wanted or time.monotonic() > deadline:
            assert all(n == 1 for n in count.values()), count  # exactly one line a request
            return found
        time.sleep(0.1)


def sample(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                total += s.value
    return total


def test_one_access_line_per_request_with_fields_and_no_key_material(
    json_gateway: GatewayProcess, admin: Admin, chat_model: str
) -> None:
    key = admin.create_key(app="observed")
    limited = admin.create_key(rate_limit_rpm=1)
    url = json_gateway.url
    oai = openai.OpenAI(base_url=url + "/v1", api_key=key["key"], max_retries=0)
    ids: dict[str, str] = {}
    raw = oai.chat.completions.with_raw_response.create(
        model=chat_model, messages=[{"role": "user", "content": "hi"}]
    )
    ids["chat"] = raw.headers["x-request-id"]
    with oai.chat.completions.with_streaming_response.create(
        model=chat_model, messages=[{"role": "user", "content": "hi"}], stream=True
    ) as streamed:
        ids["stream"] = streamed.headers["x-request-id"]
        list(streamed.iter_lines())
    wrong = httpx.post(
        url + "/v1/chat/completions",
        headers={"Authorization": "Bearer tg-nope"},
        json={"model": chat_model, "messages": []},
    )
    ids["unauthorized"] = wrong.headers["x-request-id"]
    unknown = httpx.post(
        url + "/v1/chat/completions",
        headers={"Authorization": f"Bearer {key['key']}"},
        json={"model": "no-such-model", "messages": [{"role": "user", "content": "x"}]},
    )
    ids["not_found"] = unknown.headers["x-request-id"]
    invalid = httpx.post(
        url + "/v1/chat/completions",
        headers={"Authorization": f"Bearer {key['key']}"},
        json={"model": chat_model, "messages": "not a list"},
    )
    ids["bad_request"] = invalid.headers["x-request-id"]
    for name in ("limited_ok", "limited_429"):
        r = httpx.post(
            url + "/v1/chat/completions",
            headers={"Authorization": f"Bearer {limited['key']}"},
            json={"model": chat_model, "messages": [{"role": "user", "content": "x"}]},
        )
        ids[name] = r.headers["x-request-id"]
    statuses = (wrong.status_code, unknown.status_code, invalid.status_code, r.status_code)
    assert statuses == (401, 404, 400, 429)

    lines = access_lines(json_gateway, set(ids.values()))
    by_name = {name: lines[rid] for name, rid in ids.items()}
    chat = by_name["chat"]
    assert chat["status"] == 200 and chat["alias"] == chat_model and chat["app"] == "observed"
    assert (
        chat["key_id"] == key["id"]
        and chat["key_prefix"] == key["key"][: len(chat["key_prefix"])]
        and 0 < len(chat["key_prefix"]) < len(key["key"]) // 2
    )
    assert chat["prompt_tokens"] > 0 and chat["completion_tokens"] > 0
    assert chat["latency_ms"] > 0 and chat["endpoint"] == "chat.completions"
    assert by_name["stream"]["streamed"] is True and by_name["stream"]["ttft_ms"] is not None
    assert (by_name["unauthorized"]["status"], by_name["unauthorized"]["key_id"]) == (401, None)
    assert by_name["not_found"]["status"] == 404
    assert by_name["not_found"]["alias"] == "no-such-model"
    assert (by_name["bad_request"]["status"], by_name["bad_request"]["key_id"]) == (400, key["id"])
    assert (by_name["limited_ok"]["status"], by_name["limited_429"]["status"]) == (200, 429)
    assert by_name["limited_429"]["error_class"]

    assert json_gateway.log_path is not None
    log_text = json_gateway.log_path.read_text()
    for issued in (key["key"], limited["key"]):
        assert issued not in log_text


def test_genai_metrics_after_known_traffic(
    json_gateway: GatewayProcess, admin: Admin, chat_model: str
) -> None:
    key = admin.create_key()
    labels = {
        "gen_ai_operation_name": "chat",
        "gen_ai_request_model": chat_model,
        "gen_ai_provider_name": "ollama",
        "gen_ai_response_model": "llama3:8b",
    }
    before = httpx.get(json_gateway.metrics_url).text
    oai = openai.OpenAI(base_url=json_gateway.url + "/v1", api_key=key["key"], max_retries=0)
    usage_in = usage_out = 0
    for _ in range(3):
        done = oai.chat.completions.create(
            model=chat_model, messages=[{"role": "user", "content": "count"}]
        )
        assert done.usage is not None
        usage_in += done.usage.prompt_tokens
        usage_out += done.usage.completion_tokens
    chunks = list(
        oai.chat.completions.create(
            model=chat_model,
            messages=[{"role": "user", "content": "count"}],
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    final = chunks[-1].usage
    assert final is not None
    usage_in += final.prompt_tokens
    usage_out += final.completion_tokens
    after = httpx.get(json_gateway.metrics_url).text

    def delta(name: str, **extra: str) -> float:
        return sample(after, name, **labels, **extra) - sample(before, name, **labels, **extra)

    assert delta("gen_ai_server_request_duration_seconds_count", error_type="") == 4
    assert delta("gen_ai_client_token_usage_sum", gen_ai_token_type="input") == usage_in
    assert delta("gen_ai_client_token_usage_sum", gen_ai_token_type="output") == usage_out
    assert delta("gen_ai_client_token_usage_count", gen_ai_token_type="output") == 4
    assert delta("gen_ai_server_time_to_first_token_seconds_count") == 1
    assert delta("gen_ai_server_time_per_output_token_seconds_count") == 1
