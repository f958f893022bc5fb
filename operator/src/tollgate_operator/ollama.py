"""Ollama adapter: list, pull (streaming progress) and delete models on one server."""

from __future__ import annotations

import fnmatch
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from tollgate_operator.errors import Unavailable


class PullFailed(Exception):
    """Ollama refused or aborted the pull (unknown model, registry or disk trouble)."""


def normalize_tag(name: str) -> str:
    """The canonical form Ollama lists a model under: ``llama3`` is ``llama3:latest``."""
    name = name.strip()
    for prefix in ("registry.ollama.ai/library/", "registry.ollama.ai/", "library/"):
        if name.startswith(prefix):
            name = name[len(prefix) :]
            break
    if ":" not in name.rsplit("/", 1)[-1]:
        name += ":latest"
    return name


@dataclass
class PullProgress:
    """Progress of one pull, summed over the layers Ollama reported so far."""

    status: str = ""
    layers: dict[str, tuple[int, int]] = field(default_factory=dict)

    def update(self, event: dict[str, Any]) -> None:
        self.status = str(event.get("status", self.status))
        digest = event.get("digest")
        total = event.get("total")
        if isinstance(digest, str) and isinstance(total, int) and total > 0:
            completed = event.get("completed")
            done = completed if isinstance(completed, int) else self.layers.get(digest, (0, 0))[0]
            self.layers[digest] = (min(done, total), total)

    @property
    def completed(self) -> int:
        return sum(c for c, _ in self.layers.values())

    @property
    def total(self) -> int:
        return sum(t for _, t in self.layers.values())

    @property
    def percent(self) -> int:
        total = self.total
        return int(100 * self.completed / total) if total else 0


def registry_host(model: str) -> str | None:
    """The registry a model name points at (``host[:port]/ns/name:tag``), None for Ollama's."""
    first, sep, _ = model.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost"):
        return first
    return None


class OllamaClient:
    def __init__(
        self,
        session: aiohttp.ClientSession,
        connect_timeout: float,
        read_timeout: float,
        insecure_registries: Sequence[str] = (),
    ) -> None:
        self._session = session
        self._insecure = tuple(insecure_registries)
        self._quick = aiohttp.ClientTimeout(
            total=connect_timeout + 10, connect=connect_timeout, sock_connect=connect_timeout
        )
        self._stream = aiohttp.ClientTimeout(
            total=None,
            connect=connect_timeout,
            sock_connect=connect_timeout,
            sock_read=read_timeout,
        )

    async def tags(self, base_url: str) -> set[str]:
        """The models on the server's disk."""
        return await self._names(base_url, "/api/tags")

    async def ps(self, base_url: str) -> set[str]:
        """The models in the server's memory now."""
        return await self._names(base_url, "/api/ps")

    async def _names(self, base_url: str, path: str) -> set[str]:
        try:
            async with self._session.get(f"{base_url}{path}", timeout=self._quick) as response:
                if response.status != 200:
                    raise Unavailable("ollama", f"{base_url}{path} answered {response.status}")
                data = await response.json(content_type=None)
        except (TimeoutError, aiohttp.ClientError, ValueError) as exc:
            raise Unavailable("ollama", f"{base_url}: {type(exc).__name__}") from exc
        models = (data.get("models") or []) if isinstance(data, dict) else []
        return {
            normalize_tag(str(m.get("name") or m.get("model")))
            for m in models
            if isinstance(m, dict)
        }

    async def pull(
        self,
        base_url: str,
        model: str,
        progress: PullProgress,
        on_update: Callable[[], None] | None = None,
    ) -> None:
        """Stream /api/pull until success; PullFailed with Ollama's message otherwise."""
        body: dict[str, Any] = {"model": model, "stream": True}
        host = registry_host(model)
        if host is not None and any(fnmatch.fnmatch(host, p) for p in self._insecure):
            body["insecure"] = True  # a plain-HTTP registry the platform team allowed
        try:
            async with self._session.post(
                f"{base_url}/api/pull", json=body, timeout=self._stream
            ) as response:
                if response.status != 200:
                    raise PullFailed(await _error_text(response))
                last: dict[str, Any] = {}
                # NDJSON; aiohttp's line iterator buffers to the line end across reads.
                async for raw in response.content:
                    line = raw.strip()
                    if not line:
                        continue
                    try:
                        event = json.loads(line)
                    except ValueError:
                        continue
                    if not isinstance(event, dict):
                        continue
                    if "error" in event:
                        raise PullFailed(str(event["error"]))
                    progress.update(event)
                    last = event
                    if on_update is not None:
                        on_update()
                if last.get("status") != "success":
                    raise Unavailable("ollama", f"{base_url}: the pull stream ended early")
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise Unavailable("ollama", f"{base_url}: {type(exc).__name__}") from exc

    async def load(self, base_url: str, model: str) -> None:
        """Load a model into memory: Ollama loads on a generate request without a prompt."""
        try:
            async with self._session.post(
                f"{base_url}/api/generate",
                json={"model": model, "stream": False},
                timeout=self._stream,
            ) as response:
                if response.status != 200:
                    raise PullFailed(await _error_text(response))
                await response.read()
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise Unavailable("ollama", f"{base_url}: {type(exc).__name__}") from exc

    async def delete(self, base_url: str, model: str) -> bool:
        """True when deleted, False when it was not there."""
        try:
            async with self._session.delete(
                f"{base_url}/api/delete", json={"model": model}, timeout=self._quick
            ) as response:
                if response.status == 404:
                    return False
                if response.status != 200:
                    raise Unavailable("ollama", f"delete answered {await _error_text(response)}")
                return True
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise Unavailable("ollama", f"{base_url}: {type(exc).__name__}") from exc


async def _error_text(response: aiohttp.ClientResponse) -> str:
    text = (await response.text())[:300]
    try:
        data = json.loads(text)
        if isinstance(data, dict) and "error" in data:
            return f"HTTP {response.status}: {data['error']}"
    except ValueError:
        pass
    return f"HTTP {response.status}: {text}"
