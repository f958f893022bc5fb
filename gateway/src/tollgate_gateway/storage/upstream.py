"""The upstream (Ollama) HTTP client.

The requests of the request path go through `storage.httpclient`, a lean HTTP/1.1 client
of our own, chosen by measurement: aiohttp's session cost 3-4 times its CPU per request
(see that module; `make bench` re-measures the gateway as a whole). The routing probes
(`/api/ps`, `/api/tags` every few seconds) use an aiohttp session, `session`.
"""

from __future__ import annotations

import asyncio

import aiohttp

from tollgate_gateway import metrics
from tollgate_gateway.storage.httpclient import Pool, Response, Target

UpstreamResponse = Response


class UpstreamError(Exception):
    """The model server gave no usable answer. ``kind``: ``timeout`` (silent past the read
    timeout), ``unreachable`` (no connection), ``failed`` (the connection failed; ``detail``
    names how), ``broken`` (it broke while the body was read). The service layer decides
    what the client is told (`tollgate_gateway.errors.upstream_failure`)."""

    def __init__(self, kind: str, detail: str = "") -> None:
        super().__init__(f"{kind}: {detail}" if detail else kind)
        self.kind = kind
        self.detail = detail


class Upstream:
    def __init__(self, connect_timeout: float, read_timeout: float, max_connections: int) -> None:
        self._connect_timeout = connect_timeout
        self._read_timeout = read_timeout
        self._max = max_connections
        self._pool: Pool | None = None
        self._session: aiohttp.ClientSession | None = None
        self._targets: dict[str, Target] = {}

    @property
    def session(self) -> aiohttp.ClientSession:
        """An aiohttp session, for the routing probes."""
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=100, keepalive_timeout=30),
                timeout=aiohttp.ClientTimeout(
                    total=None, sock_connect=self._connect_timeout, sock_read=self._read_timeout
                ),
                skip_auto_headers=("User-Agent",),
                cookie_jar=aiohttp.DummyCookieJar(),
            )
        return self._session

    @property
    def pool(self) -> Pool:
        if self._pool is None:
            self._pool = Pool(
                asyncio.get_running_loop(), self._connect_timeout, self._read_timeout, self._max
            )
        return self._pool

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()
        if self._session is not None:
            await self._session.close()

    async def request(
        self,
        method: str,
        url: str,
        body: bytes | None = None,
        extra_headers: dict[str, str] | None = None,
    ) -> Response:
        """Send a request and return once the response's head arrived; connection failures
        raise `UpstreamError`. ``extra_headers`` carry a trace context (``traceparent``)
        when tracing is on."""
        target = self._targets.get(url)
        if target is None:  # parsed once per URL
            try:
                target = Target.parse(url)
            except (ValueError, UnicodeError) as exc:
                metrics.UPSTREAM_ERRORS.labels("connect").inc()
                raise UpstreamError("failed", f"invalid URL {url!r}") from exc
            if len(self._targets) >= 10_000:
                self._targets.clear()
            self._targets[url] = target
        try:
            return await self.pool.request(method, target, body, extra_headers)
        except TimeoutError as exc:
            raise timed_out() from exc
        except aiohttp.ClientError as exc:  # the connection failed before the answer's head
            metrics.UPSTREAM_ERRORS.labels("connect").inc()
            raise UpstreamError("failed", type(exc).__name__) from exc
        except OSError as exc:  # no connection: refused, no route, no such host, TLS
            metrics.UPSTREAM_ERRORS.labels("connect").inc()
            raise UpstreamError("unreachable") from exc


def timed_out() -> UpstreamError:
    """The model server was silent longer than the read timeout, counted once."""
    metrics.UPSTREAM_ERRORS.labels("timeout").inc()
    return UpstreamError("timeout")


async def read_body(resp: Response) -> bytes:
    try:
        return await resp.read()
    except TimeoutError as exc:
        raise timed_out() from exc
    except aiohttp.ClientError as exc:
        metrics.UPSTREAM_ERRORS.labels("stream").inc()
        raise UpstreamError("broken") from exc
