"""Everything one stand-in instance remembers, shared by its handlers."""

from __future__ import annotations

import asyncio
import fnmatch
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from .catalog import CONTEXT_LENGTH, LoadedModels, ModelRecord, ModelStore
from .config import StandinConfig
from .faults import FaultBook
from .names import ModelName, parse_name
from .scheduler import Scheduler
from .stats import Stats
from .wire import parse_keep_alive


@dataclass(slots=True)
class StandinState:
    config: StandinConfig
    store: ModelStore
    loaded: LoadedModels
    scheduler: Scheduler
    faults: FaultBook
    stats: Stats
    default_keep_alive: float
    registry: tuple[str, ...] = field(default=())

    @classmethod
    def from_config(cls, config: StandinConfig) -> StandinState:
        stats = Stats(config.request_log_size)
        return cls(
            config=config,
            store=ModelStore(config.models),
            loaded=LoadedModels(),
            scheduler=Scheduler(config.parallel, config.max_queue, stats),
            faults=FaultBook(),
            stats=stats,
            default_keep_alive=parse_keep_alive(config.keep_alive, 300.0),
            registry=_registry_keys(config),
        )

    def reset(self) -> None:
        """Back to the configured models, no faults, zeroed counters."""
        self.store.reset()
        self.loaded.clear()
        self.faults.clear()
        self.stats.reset()

    def in_registry(self, name: ModelName) -> bool:
        return any(fnmatch.fnmatchcase(name.key, pattern) for pattern in self.registry)

    def num_ctx(self, options: Mapping[str, Any] | None) -> int:
        """The context a request loads the model with: ``options.num_ctx`` or the default,
        at most what the model was trained for (Ollama lowers larger requests)."""
        value = (options or {}).get("num_ctx")
        wanted = self.config.context_length
        if isinstance(value, int | float) and not isinstance(value, bool) and value > 0:
            wanted = int(value)
        return min(wanted, CONTEXT_LENGTH)

    async def load(self, record: ModelRecord, keep_alive: float, num_ctx: int) -> None:
        """Pretend to load weights (``load_ms``) unless resident; then mark it loaded."""
        if not self.loaded.is_loaded(record.key) and self.config.load_ms > 0:
            async with self.scheduler.loading_lock(record.key):
                if not self.loaded.is_loaded(record.key):
                    await asyncio.sleep(self.config.load_ms / 1000)
                    self.loaded.touch(record, keep_alive, num_ctx)
        self.loaded.touch(record, keep_alive, num_ctx)


def _registry_keys(config: StandinConfig) -> tuple[str, ...]:
    keys: list[str] = []
    for raw in (*config.registry, *config.models):
        if any(char in raw for char in "*?["):
            keys.append(raw.lower())  # a glob over full names: host/namespace/model:tag
            continue
        name = parse_name(raw)
        if name is None:
            raise ValueError(f"invalid model name in registry: {raw!r}")
        keys.append(name.key)
    return tuple(keys)


STATE: web.AppKey[StandinState] = web.AppKey("tollgate_standin_state", StandinState)
