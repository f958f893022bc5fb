"""``/_standin/*``: test controls that real Ollama does not have.

* ``GET /_standin/stats``: counters (see :meth:`Stats.snapshot`);
* ``GET /_standin/requests?path=/api/chat&limit=20``: recent requests, newest last;
* ``GET|POST|DELETE /_standin/faults``: list, add (one object or a list), clear faults;
* ``POST /_standin/reset``: configured models back, faults cleared, counters zeroed;
* ``GET /_standin/config``: the running configuration.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import orjson
from aiohttp import web

from .faults import parse_fault
from .state import STATE
from .wire import json_response


async def stats(request: web.Request) -> web.Response:
    return json_response(request.app[STATE].stats.snapshot())


async def recent_requests(request: web.Request) -> web.Response:
    state = request.app[STATE]
    path = request.query.get("path", "")
    try:
        limit = int(request.query.get("limit", "0"))
    except ValueError:
        return json_response({"error": "limit must be an integer"}, status=400)
    entries = [e for e in state.stats.recent if str(e["path"]).startswith(path)]
    return json_response({"requests": entries[-limit:] if limit > 0 else entries})


async def list_faults(request: web.Request) -> web.Response:
    return json_response({"faults": request.app[STATE].faults.active()})


async def add_faults(request: web.Request) -> web.Response:
    state = request.app[STATE]
    try:
        payload: Any = orjson.loads(await request.read())
        items = payload if isinstance(payload, list) else [payload]
        faults = [parse_fault(item) for item in items]
    except (orjson.JSONDecodeError, ValueError) as exc:
        return json_response({"error": str(exc)}, status=400)
    for fault in faults:
        state.faults.add(fault)
    return json_response({"faults": state.faults.active()})


async def clear_faults(request: web.Request) -> web.Response:
    request.app[STATE].faults.clear()
    return json_response({"faults": []})


async def reset(request: web.Request) -> web.Response:
    request.app[STATE].reset()
    return json_response({"status": "reset"})


async def config(request: web.Request) -> web.Response:
    return json_response(dataclasses.asdict(request.app[STATE].config))


def add_routes(app: web.Application) -> None:
    app.router.add_get("/_standin/stats", stats)
    app.router.add_get("/_standin/requests", recent_requests)
    app.router.add_get("/_standin/faults", list_faults)
    app.router.add_post("/_standin/faults", add_faults)
    app.router.add_delete("/_standin/faults", clear_faults)
    app.router.add_post("/_standin/reset", reset)
    app.router.add_get("/_standin/config", config)
