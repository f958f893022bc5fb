"""The access log writes its lines itself, a loop turn's at once, when the logging setup is
the gateway's own: each line must be what the logging handler would have written."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import re
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from tollgate_gateway.accesslog import ACCESS, AccessLog
from tollgate_gateway.logs import configure_logging, direct_stream

FIELDS: dict[str, Any] = {
    "request_id": "req-1",
    "key_id": "7d3c",
    "key_prefix": "tg-abcd",
    "app": "café",  # not ASCII: JSON and text keep it as the handler would
    "alias": "gpt-4",
    "backend_model": "llama3:8b",
    "replica": None,
    "endpoint": "chat.completions",
    "status": 200,
    "error_class": None,
    "latency_ms": 12.345,
    "ttft_ms": 3.21,
    "prompt_tokens": 11,
    "completion_tokens": 7,
    "streamed": False,
}
STAMP = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} ")


@contextlib.contextmanager
def captured_stderr() -> Iterator[io.StringIO]:
    """sys.stderr replaced in the test's own body (pytest sets its own between phases)."""
    root = logging.getLogger()
    handlers, level, saved = root.handlers[:], root.level, sys.stderr
    buffer = io.StringIO()
    sys.stderr = buffer
    try:
        yield buffer
    finally:
        sys.stderr = saved
        root.handlers[:] = handlers
        root.setLevel(level)


def through_logging(log: AccessLog, fields: dict[str, Any]) -> None:
    """The same line written through `logging` (another handler present forces that path)."""
    extra = logging.NullHandler()
    ACCESS.addHandler(extra)
    try:
        assert direct_stream(ACCESS) is None
        log.write(fields)
    finally:
        ACCESS.removeHandler(extra)


@pytest.mark.parametrize("json_lines", [False, True])
def test_direct_lines_are_the_handlers_lines(json_lines: bool) -> None:
    with captured_stderr() as stderr:
        configure_logging(json_lines, "info")
        lines = written(stderr, json_lines)
    assert len(lines) == 4
    check(lines, json_lines)


def written(stderr: io.StringIO, json_lines: bool) -> list[str]:
    assert direct_stream(ACCESS) is stderr
    log = AccessLog(enabled=True, sample=1.0, json_lines=json_lines)

    async def direct() -> None:
        log.write(FIELDS)
        log.write({**FIELDS, "status": 429, "error_class": "rate_limit", "ttft_ms": None})
        assert stderr.getvalue() == ""  # written once the loop turn is over
        await asyncio.sleep(0)

    asyncio.run(direct())
    through_logging(log, FIELDS)
    through_logging(log, {**FIELDS, "status": 429, "error_class": "rate_limit", "ttft_ms": None})
    return stderr.getvalue().splitlines()


def check(lines: list[str], json_lines: bool) -> None:
    if json_lines:
        entries = [json.loads(line) for line in lines]
        for entry in entries:
            assert entry.pop("ts")  # the moment differs, nothing else
        assert entries[0] == entries[2] and entries[1] == entries[3]
        assert entries[0]["logger"] == "tollgate_gateway.access"
        assert entries[0]["app"] == "café" and entries[0]["level"] == "info"
    else:
        assert all(STAMP.match(line) for line in lines)
        bare = [STAMP.sub("", line) for line in lines]
        assert bare[0] == bare[2] and bare[1] == bare[3]
        assert bare[0] == (
            "INFO tollgate_gateway.access: chat.completions gpt-4 200 12.3ms ttft=3.2ms "
            "tokens=11+7 key=tg-abcd app=café req=req-1"
        )
        assert bare[1].endswith("req=req-1 error=rate_limit")


def test_any_other_logging_setup_gets_the_records() -> None:
    with captured_stderr() as stderr:
        logging.getLogger().handlers[:] = [logging.StreamHandler(stderr)]
        assert direct_stream(ACCESS) is None
