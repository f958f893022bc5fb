"""Logging: JSON lines in a cluster (TOLLGATE_LOG_JSON=true), readable text locally."""

from __future__ import annotations

import logging
import sys
from datetime import UTC, datetime
from typing import TextIO, cast

import orjson


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        access = getattr(record, "access", None)
        if access is not None:
            entry.update(access)
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(entry).decode()


TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class _Handler(logging.StreamHandler):  # type: ignore[type-arg]
    """The one handler `configure_logging` installs (so the access log knows its stream)."""


def configure_logging(json_logs: bool, level: str) -> None:
    handler = _Handler(sys.stderr)
    handler.setFormatter(JsonFormatter() if json_logs else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("alembic").setLevel(logging.WARNING)


def direct_stream(logger: logging.Logger) -> TextIO | None:
    """The stream `logger`'s records end up in when nothing but `configure_logging`'s
    handler handles them (the access log then writes its lines there itself, a loop turn's
    at once: the logging machinery costs more than the rest of a request's accounting);
    None otherwise (another handler, a filter: records go through logging)."""
    if logger.handlers or logger.filters or not logger.propagate:
        return None
    root = logging.getLogger()
    if root.filters or len(root.handlers) != 1:
        return None
    handler = root.handlers[0]
    if type(handler) is not _Handler or handler.filters:
        return None
    return cast(TextIO, handler.stream)
