"""Everything one stand-in instance remembers, shared by its handlers."""

from __future__ import annotations

import asyncio
import fnmatch
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from .catalog import CONTEXT_LENGTH, LoadedModels, ModelRecord, ModelStore
from .config import StandinConfig
from .faults import FaultBook
from .names import ModelName, parse_name
from .promptcache import CacheSlot, PromptCache, answer_words, prompt_words
from .scheduler import Scheduler
from .stats import Stats
from .textgen import Turn
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
    prompt_cache: PromptCache
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
            prompt_cache=PromptCache(config.parallel),
            registry=_registry_keys(config),
        )

    def reset(self) -> None:
        """Back to the configured models, no faults, zeroed counters."""
        self.store.reset()
        self.loaded.clear()
        self.prompt_cache.clear()
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
        """Pretend to load weights (``load_ms``) unless resident; then mark it loaded.

        With ``max_loaded_models`` set, loading one more model first evicts another the way
        Ollama's scheduler does: the idle one with the shortest keep-alive (then by name), or,
        when every loaded model is busy, the first of them once its requests have finished.
        """
        if not self.loaded.is_loaded(record.key):
            async with self.scheduler.loading_lock(record.key):
                if not self.loaded.is_loaded(record.key):
                    await self._make_room(record.key)
                    self.stats.loads += 1
                    started = time.perf_counter()
                    if self.config.load_ms > 0:
                        await asyncio.sleep(self.config.load_ms / 1000)
                    self.stats.load_seconds += time.perf_counter() - started
                    self.loaded.touch(record, keep_alive, num_ctx)
        self.loaded.touch(record, keep_alive, num_ctx)

    async def _make_room(self, key: str) -> None:
        limit = self.config.max_loaded_models
        while limit and len([k for k in self.loaded.live_keys() if k != key]) >= limit:
            order = [k for k in self.loaded.eviction_order() if k != key]
            idle = [k for k in order if not self.stats.in_flight_by_model.get(k)]
            if idle:
                self.unload(idle[0])
                self.stats.evictions += 1
                continue
            await asyncio.sleep(0.005)  # Ollama waits for the runner to finish its requests

    def unload(self, key: str) -> None:
        """The runner goes, and its prompt cache with it."""
        self.loaded.unload(key)
        self.prompt_cache.drop(key)

    def prefill(self, key: str, turns: Sequence[Turn]) -> Prefill:
        """The prompt's cache slot and the extra time to first token for the prompt tokens
        it did not hold; `Prefill.done` gives the slot back."""
        if self.config.prefill_ms_per_token <= 0:
            return Prefill(0.0)  # no cost to model: the hot path stays as lean as before
        words = prompt_words(turns)
        slot, cached = self.prompt_cache.acquire(key, words)
        if cached:
            self.stats.prompt_cache_hits += 1
            self.stats.prompt_cached_tokens += cached
        seconds = max(len(words) - cached, 1) * self.config.prefill_ms_per_token / 1000
        return Prefill(seconds, slot, words)


@dataclass(slots=True)
class Prefill:
    """A generation's hold on its prompt-cache slot (none with the cache off)."""

    seconds: float
    slot: CacheSlot | None = None
    words: tuple[str, ...] = ()

    def done(self, answer: str | None) -> None:
        """The generation is over: its slot keeps the prompt and, when it `answer`ed (it ran
        to its end), the answer's tokens, as the runner appends each one it generates."""
        if self.slot is not None:
            self.slot.release(self.words if answer is None else self.words + answer_words(answer))
            self.slot = None


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
