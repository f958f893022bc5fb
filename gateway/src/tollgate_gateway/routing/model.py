"""What the router knows about replicas, and what it decides."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum


class Policy(StrEnum):
    """``OllamaPool.spec.routing.policy``."""

    MODEL_AWARE = "modelAware"
    LEAST_LOAD = "leastLoad"
    ROUND_ROBIN = "roundRobin"


class Reason(StrEnum):
    """Why a replica was chosen: the ``reason`` label of the routing-decision metric."""

    LOADED = "loaded"  # the model is in memory there; least in flight among those
    PREFIX = "prefix"  # the model is loaded there and the conversation's prefix hashes to it
    LEAST_LOAD = "least_load"  # policy leastLoad: fewest in flight per parallel slot
    COLD = "cold"  # loaded nowhere: the replica with the most room will load it
    ROUND_ROBIN = "round_robin"  # policy roundRobin


@dataclass(frozen=True, slots=True)
class Replica:
    """One Ollama replica as the gateway sees it.

    ``loaded`` maps each model in memory to the time (same clock as ``now`` in
    :func:`~tollgate_gateway.routing.policy.choose`) until which Ollama keeps it;
    ``pulled`` is every model on its disk (a model not pulled yet gets no traffic).
    """

    name: str
    url: str
    pulled: frozenset[str]
    loaded: Mapping[str, float] = field(default_factory=dict)
    in_flight: int = 0
    slots: int = 1
    ready: bool = True
    draining: bool = False

    def has_loaded(self, model: str, now: float) -> bool:
        until = self.loaded.get(model)
        return until is not None and until > now

    def loaded_count(self, now: float) -> int:
        return sum(1 for until in self.loaded.values() if until > now)

    @property
    def load(self) -> float:
        """Requests in flight per parallel slot."""
        return self.in_flight / max(self.slots, 1)


@dataclass(frozen=True, slots=True)
class RoutingConfig:
    policy: Policy = Policy.MODEL_AWARE
    prefix_chars: int = 256  # characters of system prompt + first user turn that are hashed
    load_factor: float = 1.25  # CHWBL bound: no replica above load_factor x the mean
    virtual_nodes: int = 100  # points per replica on the hash ring

    def __post_init__(self) -> None:
        if self.prefix_chars < 0:
            raise ValueError("prefix_chars must be >= 0")
        if self.load_factor < 1.0:
            raise ValueError("load_factor must be >= 1")
        if self.virtual_nodes < 1:
            raise ValueError("virtual_nodes must be >= 1")


DEFAULT_ROUTING = RoutingConfig()


def routing_config(data: Mapping[str, object] | None) -> RoutingConfig:
    """A pool's routing settings as the catalog stores them (``{"policy", "prefix_chars"}``);
    anything unknown or missing takes the default."""
    if not data:
        return DEFAULT_ROUTING
    try:
        policy = Policy(str(data.get("policy") or Policy.MODEL_AWARE.value))
    except ValueError:
        policy = Policy.MODEL_AWARE
    chars = data.get("prefix_chars")
    prefix_chars = chars if isinstance(chars, int) and chars >= 0 else DEFAULT_ROUTING.prefix_chars
    return RoutingConfig(policy=policy, prefix_chars=prefix_chars)


@dataclass(frozen=True, slots=True)
class Target:
    """A replica an alias may be sent to, as the catalog lists it (``name`` labels metrics;
    ``url`` identifies the replica's state)."""

    name: str
    url: str


def normalize_model(name: str) -> str:
    """``tiny`` → ``tiny:latest``, as Ollama names a model in ``/api/ps`` and ``/api/tags``."""
    last = name.rsplit("/", 1)[-1]
    return name if ":" in last else name + ":latest"


@dataclass(frozen=True, slots=True)
class Decision:
    replica: Replica
    reason: Reason
