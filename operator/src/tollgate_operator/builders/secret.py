"""The Secret an ApiKey delivers: ready for ``envFrom`` in an application's Pod."""

from __future__ import annotations

import base64
from typing import Any

from tollgate_operator.builders.labels import (
    APIKEY_LABEL,
    KEY_ID_ANNOTATION,
    MANAGED_BY,
    ROTATION_TOKEN_ANNOTATION,
)

KEY_FIELD = "api-key"


def _b64(value: str) -> str:
    return base64.b64encode(value.encode()).decode()


def build_key_secret(
    *,
    name: str,
    namespace: str,
    apikey: str,
    key: str,
    key_id: str,
    rotation_token: str,
    base_url: str,
) -> dict[str, Any]:
    """The key, its id and the rotation token it answers travel together in one object.

    Besides the OpenAI clients' variables it carries those of the Anthropic SDK and Claude
    Code: ``ANTHROPIC_BASE_URL`` is the gateway's root (they append ``/v1/messages``),
    ``ANTHROPIC_API_KEY`` the same key (sent as ``x-api-key``)."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {**MANAGED_BY, APIKEY_LABEL: apikey},
            "annotations": {
                KEY_ID_ANNOTATION: key_id,
                ROTATION_TOKEN_ANNOTATION: rotation_token,
            },
        },
        "data": {
            KEY_FIELD: _b64(key),
            "OPENAI_API_KEY": _b64(key),
            "OPENAI_BASE_URL": _b64(base_url),
            "ANTHROPIC_API_KEY": _b64(key),
            "ANTHROPIC_BASE_URL": _b64(base_url.rstrip("/").removesuffix("/v1")),
        },
    }


def secret_value(secret: dict[str, Any] | None, field: str) -> str | None:
    """A Secret's field, decoded; None when the Secret or field is missing or not text."""
    if secret is None:
        return None
    raw = (secret.get("data") or {}).get(field)
    if raw is None:
        text = (secret.get("stringData") or {}).get(field)
        return str(text) if text is not None else None
    try:
        return base64.b64decode(raw, validate=True).decode()
    except (ValueError, UnicodeDecodeError):
        return None
