"""One access-log line per proxied request, and the GenAI attribute names.

JSON (``TOLLGATE_LOG_JSON=true``) carries every field; locally the line is short text.
Never key material: the key's id and its display prefix only. ``access_log_sample`` keeps
that share of successful requests; every refusal and error is always logged.
"""

from __future__ import annotations

import logging
import random
from typing import Any

ACCESS = logging.getLogger("tollgate_gateway.access")

OPERATIONS = {
    "chat.completions": "chat",
    "completions": "text_completion",
    "embeddings": "embeddings",
    "api.chat": "chat",
    "api.generate": "text_completion",
    "api.embed": "embeddings",
    "api.embeddings": "embeddings",
    "api.show": "show",
    "responses": "chat",
    "messages": "chat",
}


def operation(endpoint: str) -> str:
    """``gen_ai.operation.name`` for one of our endpoints."""
    return OPERATIONS.get(endpoint, endpoint)


class AccessLog:
    def __init__(self, enabled: bool, sample: float, json_lines: bool) -> None:
        self.enabled = enabled and sample > 0
        self._sample = min(sample, 1.0)
        self._json = json_lines

    def wanted(self, status: int) -> bool:
        if not self.enabled or not ACCESS.isEnabledFor(logging.INFO):
            return False
        return status >= 300 or self._sample >= 1.0 or random.random() < self._sample  # noqa: S311

    def write(self, fields: dict[str, Any]) -> None:
        if self._json:
            ACCESS.info("access", extra={"access": fields})
            return
        tokens = f"{fields['prompt_tokens']}+{fields['completion_tokens']}"
        ttft = f" ttft={fields['ttft_ms']:.1f}ms" if fields.get("ttft_ms") is not None else ""
        error = f" error={fields['error_class']}" if fields.get("error_class") else ""
        ACCESS.info(
            "%s %s %s %.1fms%s tokens=%s key=%s app=%s req=%s%s",
            fields["endpoint"],
            fields["alias"],
            fields["status"],
            fields["latency_ms"],
            ttft,
            tokens,
            fields["key_prefix"] or fields["key_id"],
            fields["app"] or "-",
            fields["request_id"],
            error,
        )
