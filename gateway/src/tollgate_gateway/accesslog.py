"""One access-log line per proxied request, and the GenAI attribute names.

JSON (``TOLLGATE_LOG_JSON=true``) carries every field; locally the line is short text.
Never key material: the key's id and its display prefix only. ``access_log_sample`` keeps
that share of successful requests; every refusal and error is always logged.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from datetime import UTC, datetime
from typing import Any, TextIO

import orjson

from tollgate_gateway.logs import direct_stream

ACCESS = logging.getLogger("tollgate_gateway.access")
LINE = "%s %s %s %.1fms%s tokens=%s key=%s app=%s req=%s%s"

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
    """Writes the lines. When the logging configuration is `logs.configure_logging`'s
    alone, it formats them itself, exactly as that handler would (`logs.TEXT_FORMAT` or
    `JsonFormatter`), and writes a loop turn's lines at once; otherwise they go through
    `logging`."""

    def __init__(self, enabled: bool, sample: float, json_lines: bool) -> None:
        self.enabled = enabled and sample > 0
        self._sample = min(sample, 1.0)
        self._json = json_lines
        self._pending: list[str] = []

    def wanted(self, status: int) -> bool:
        if not self.enabled or not ACCESS.isEnabledFor(logging.INFO):
            return False
        return status >= 300 or self._sample >= 1.0 or random.random() < self._sample  # noqa: S311

    def write(self, fields: dict[str, Any]) -> None:
        stream = direct_stream(ACCESS)
        if self._json:
            if stream is None:
                ACCESS.info("access", extra={"access": fields})
                return
            created = time.time()
            entry = {
                "ts": datetime.fromtimestamp(created, UTC).isoformat(),
                "level": "info",
                "logger": ACCESS.name,
                "msg": "access",
                **fields,
            }
            self._queue(stream, orjson.dumps(entry).decode())
            return
        tokens = f"{fields['prompt_tokens']}+{fields['completion_tokens']}"
        ttft = f" ttft={fields['ttft_ms']:.1f}ms" if fields.get("ttft_ms") is not None else ""
        error = f" error={fields['error_class']}" if fields.get("error_class") else ""
        args = (
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
        if stream is None:
            ACCESS.info(LINE, *args)
            return
        created = time.time()  # as logging.Formatter's asctime: local time, milliseconds
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(created))
        millis = int((created - int(created)) * 1000)
        self._queue(stream, f"{stamp},{millis:03d} INFO {ACCESS.name}: {LINE % args}")

    def _queue(self, stream: TextIO, line: str) -> None:
        if not self._pending:
            try:
                asyncio.get_running_loop().call_soon(self._flush, stream)
            except RuntimeError:  # no loop (a script, a test): at once
                self._pending.append(line)
                self._flush(stream)
                return
        self._pending.append(line)

    def _flush(self, stream: TextIO) -> None:
        lines, self._pending = self._pending, []
        if not lines:
            return
        try:
            stream.write("\n".join(lines) + "\n")
            stream.flush()
        except (OSError, ValueError):  # a closed or full stream: as logging, never the request
            pass
