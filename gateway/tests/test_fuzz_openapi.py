"""Fuzz every operation of the OpenAPI document (proxy and admin APIs) with schemathesis,
with a valid API key and a valid admin token, against a real gateway: no 5xx, and every
answer conforms to the document (status, content type, body).

Bounded: FUZZ_EXAMPLES cases per operation (about a minute in all). The gateway has a
database of its own, so the users, keys and aliases the fuzzer creates disturb no other test.
"""

from __future__ import annotations

import copy
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tollgate_dev.plugins.services import Admin, gateway_env
from tollgate_dev.servers.backing import LocalPostgres, LocalValkey
from tollgate_dev.servers.programs import GatewayProcess, StandinProcess

FUZZ_EXAMPLES = 10
CHAT, EMBED = "fuzz-chat", "fuzz-embed"
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


@pytest.fixture(scope="module")
def fuzz_gateway(
    service_dir: Path, valkey: LocalValkey, standin: StandinProcess
) -> Iterator[GatewayProcess]:
    pg = LocalPostgres(service_dir / "fuzz-postgres", log_file=service_dir / "fuzz-pg.log")
    pg.start()
    from tollgate_gateway.cli import migrate
    from tollgate_gateway.config import Settings

    migrate(Settings(postgres_dsn=pg.dsn))
    gateway = GatewayProcess(
        gateway_env(pg.dsn, valkey.url, standin.url), log_path=service_dir / "fuzz-gateway.log"
    )
    gateway.start()
    yield gateway
    gateway.stop()
    pg.stop()


@pytest.fixture(scope="module")
def credentials(fuzz_gateway: GatewayProcess) -> dict[str, str]:
    admin = Admin(fuzz_gateway.url)
    admin.ensure_model(CHAT, "llama3:8b")
    admin.ensure_model(EMBED, "nomic-embed-text:latest")
    key = admin.create_key()["key"]
    token = admin.http.headers["Authorization"]
    admin.http.close()
    return {"key": f"Bearer {key}", "admin": token}


def with_real_aliases(document: dict[str, Any]) -> dict[str, Any]:
    """Proxy requests name one of the gateway's aliases or an unknown one, so that fuzzed
    bodies also go all the way to the model server (a random string is always a 404)."""
    document = copy.deepcopy(document)
    for path, item in document["paths"].items():
        if path.startswith(("/v1/", "/api/")) and "post" in item:
            body = item["post"]["requestBody"]["content"]["application/json"]["schema"]
            alias = EMBED if "embed" in path else CHAT
            body["properties"]["model"] = {"enum": [alias, "no-such-model"]}
    return document


def document() -> dict[str, Any]:
    """The document the gateway serves at /openapi.json (the last test checks they agree)."""
    from tollgate_gateway.config import Settings
    from tollgate_gateway.main import create_app

    return with_real_aliases(create_app(Settings()).openapi())


SCHEMA = schemathesis.openapi.from_dict(document())
STATUSES: Counter[tuple[str, str, int]] = Counter()
OPERATIONS = [result.ok() for result in SCHEMA.get_all_operations()]


@pytest.mark.parametrize("operation", OPERATIONS, ids=[op.label for op in OPERATIONS])
@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_fuzz_finds_no_server_error_and_no_schema_violation(
    operation: Any, mode: GenerationMode, fuzz_gateway: GatewayProcess, credentials: dict[str, str]
) -> None:
    path: str = operation.path
    if path == "/admin/login":
        headers = {}
    elif path.startswith("/admin/"):
        headers = {"Authorization": credentials["admin"]}
    else:
        headers = {"Authorization": credentials["key"]}

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=FUZZ_EXAMPLES,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        derandomize=True,
        database=None,
    )
    def fuzz(case: Any) -> None:
        response = case.call_and_validate(base_url=fuzz_gateway.url, headers=headers, checks=CHECKS)
        STATUSES[(operation.label, mode.value, response.status_code)] += 1

    fuzz()


def test_the_document_describes_the_proxy_and_admin_apis(fuzz_gateway: GatewayProcess) -> None:
    served = httpx.get(fuzz_gateway.url + "/openapi.json").json()
    assert with_real_aliases(served) == document()
    paths = served["paths"]
    for path in (
        "/v1/chat/completions",
        "/v1/completions",
        "/v1/embeddings",
        "/v1/models",
        "/v1/models/{model}",
        "/v1/messages",
        "/v1/messages/count_tokens",
        "/v1/responses",
        "/v1/responses/{response_id}",
        "/v1/responses/{response_id}/input_items",
        "/v1/key",
        "/api/chat",
        "/api/generate",
        "/api/embed",
        "/api/show",
        "/api/tags",
        "/admin/keys",
        "/admin/login",
    ):
        assert path in paths, path
    for item in paths.values():
        for operation in item.values():
            assert "422" not in operation["responses"]  # errors are 400, in the OpenAI shape


def test_the_fuzz_reached_the_model_server() -> None:
    """Valid bodies went all the way through (not every case stopped at a 4xx)."""
    ok = {label for (label, mode, status) in STATUSES if status == 200 and mode == "positive"}
    for label in ("POST /v1/chat/completions", "POST /v1/embeddings", "POST /api/chat"):
        assert label in ok, sorted(STATUSES.items())
