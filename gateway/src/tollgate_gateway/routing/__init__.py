"""Model-aware routing across an OllamaPool's replicas: pure decisions, no I/O.

The gateway feeds these functions what it knows about each replica (ready, draining, models
pulled and loaded, requests in flight) and gets back one replica and the reason it was chosen.
Nothing here touches the network, a clock or a random source: callers pass ``now`` and a
round-robin counter, so every decision can be replayed in a unit test.
"""

from tollgate_gateway.routing.health import Ejector
from tollgate_gateway.routing.model import Decision, Policy, Reason, Replica, RoutingConfig
from tollgate_gateway.routing.policy import choose, eligible
from tollgate_gateway.routing.prefix import chat_prefix, generate_prefix, prefix_hash
from tollgate_gateway.routing.retry import RetryBudget, retryable
from tollgate_gateway.routing.ring import HashRing, chwbl_pick

__all__ = [
    "Decision",
    "Ejector",
    "HashRing",
    "Policy",
    "Reason",
    "Replica",
    "RetryBudget",
    "RoutingConfig",
    "chat_prefix",
    "choose",
    "chwbl_pick",
    "eligible",
    "generate_prefix",
    "prefix_hash",
    "retryable",
]
