"""The routing decision for one request."""

from __future__ import annotations

from collections.abc import Collection, Sequence

from tollgate_gateway.routing.model import Decision, Policy, Reason, Replica, RoutingConfig
from tollgate_gateway.routing.prefix import prefix_hash
from tollgate_gateway.routing.ring import chwbl_pick


def eligible(
    replicas: Sequence[Replica], model: str, exclude: Collection[str] = ()
) -> list[Replica]:
    """Ready, not draining, model pulled, not excluded (ejected or already tried)."""
    return [
        r
        for r in replicas
        if r.ready and not r.draining and model in r.pulled and r.name not in exclude
    ]


def _least_loaded(candidates: Sequence[Replica]) -> Replica:
    # ties broken by name so that equal states give equal answers
    return min(candidates, key=lambda r: (r.load, r.in_flight, r.name))


def choose(
    replicas: Sequence[Replica],
    model: str,
    *,
    config: RoutingConfig,
    now: float,
    prefix: bytes | None = None,
    exclude: Collection[str] = (),
    counter: int = 0,
) -> Decision | None:
    """One replica for ``model``, or None when no replica may serve it now.

    modelAware: among replicas with the model loaded, the prefix's CHWBL replica (or the least
    loaded without a prefix); when it is loaded nowhere, the replica with the fewest loaded
    models (it evicts least), then the least loaded.
    """
    candidates = eligible(replicas, model, exclude)
    if not candidates:
        return None
    if config.policy is Policy.ROUND_ROBIN:
        ordered = sorted(candidates, key=lambda r: r.name)
        return Decision(ordered[counter % len(ordered)], Reason.ROUND_ROBIN)
    if config.policy is Policy.LEAST_LOAD:
        return Decision(_least_loaded(candidates), Reason.LEAST_LOAD)
    warm = [r for r in candidates if r.has_loaded(model, now)]
    if warm:
        if prefix is not None and len(warm) > 1:
            by_name = {r.name: r for r in warm}
            name = chwbl_pick(
                prefix_hash(prefix),
                {r.name: r.in_flight for r in warm},
                config.load_factor,
                config.virtual_nodes,
            )
            return Decision(by_name[name], Reason.PREFIX)
        if prefix is not None:
            return Decision(warm[0], Reason.PREFIX)
        return Decision(_least_loaded(warm), Reason.LOADED)
    roomiest = min(candidates, key=lambda r: (r.loaded_count(now), r.load, r.name))
    return Decision(roomiest, Reason.COLD)
