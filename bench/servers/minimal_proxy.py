"""The reference proxy: what a minimal FastAPI + aiohttp pass-through costs.

No keys, limits, usage or metrics: the body goes to the upstream as it came, the answer
comes back as it was (streamed when the upstream streams). Served like the gateway:
uvicorn, uvloop, httptools, one worker, no access log.

    python bench/servers/minimal_proxy.py --port 8100 --upstream http://127.0.0.1:8200
"""

from __future__ import annotations

import argparse
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import aiohttp
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import Response, StreamingResponse


def create_app(upstream: str) -> FastAPI:
    session: aiohttp.ClientSession | None = None

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        nonlocal session
        connector = aiohttp.TCPConnector(limit=2000, limit_per_host=2000, keepalive_timeout=30)
        session = aiohttp.ClientSession(
            connector=connector, timeout=aiohttp.ClientTimeout(total=None, sock_read=600)
        )
        yield
        await session.close()

    app = FastAPI(lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)

    @app.post("/v1/{path:path}")
    async def proxy(path: str, request: Request) -> Response:
        assert session is not None
        body = await request.body()
        resp = await session.post(
            f"{upstream}/v1/{path}", data=body, headers={"Content-Type": "application/json"}
        )
        content_type = resp.headers.get("Content-Type", "application/json")
        if content_type.startswith("text/event-stream"):

            async def relay() -> AsyncIterator[bytes]:
                try:
                    async for chunk in resp.content.iter_any():
                        yield chunk
                finally:
                    resp.release()

            return StreamingResponse(relay(), resp.status, media_type=content_type)
        content = await resp.read()
        resp.release()
        return Response(content, resp.status, media_type=content_type)

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True)
    args = parser.parse_args()
    uvicorn.run(
        create_app(args.upstream.rstrip("/")),
        host=args.host,
        port=args.port,
        loop="uvloop",
        http="httptools",
        access_log=False,
        log_level="warning",
        backlog=4096,
    )


if __name__ == "__main__":
    main()
