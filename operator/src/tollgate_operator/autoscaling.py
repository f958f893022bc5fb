"""How many replicas a pool wants: a pure function of the gateways' demand samples.

Demand is what the gateways report for a pool: requests in flight plus requests queued.
One replica serves ``slots`` requests at once (its ``numParallel``), so the load of a pool
is demand / (replicas x slots); the pool is sized so that the load stays at ``target``.
In flight + queued is the right signal for Ollama: it counts work that is waiting (which
GPU utilisation cannot show) and it is zero exactly when a pool may go to zero.

Flapping is prevented the way the HorizontalPodAutoscaler's stabilisation windows do it:
a scale-up follows the *lowest* recommendation of the last ``scale_up_delay`` seconds
(a one-sample burst does not add a GPU), a scale-down the *highest* of the last
``scale_down_delay`` seconds (the pool must have been quiet for the whole delay), and a
scale-down also needs samples that cover the whole delay (after an operator restart the
history is short, so it waits instead of guessing). A request for a pool at zero wakes it
at once: that request is being held.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class AutoscalingSpec:
    min_replicas: int
    max_replicas: int
    target_load: float = 0.8
    scale_up_delay: float = 0.0
    scale_down_delay: float = 300.0
    slots: int = 1

    def __post_init__(self) -> None:
        if not 0 <= self.min_replicas <= self.max_replicas:
            raise ValueError("0 <= minReplicas <= maxReplicas is required")
        if self.max_replicas < 1:
            raise ValueError("maxReplicas must be >= 1")
        if self.target_load <= 0:
            raise ValueError("target load must be > 0")
        if self.scale_up_delay < 0 or self.scale_down_delay < 0:
            raise ValueError("delays must be >= 0")
        if self.slots < 1:
            raise ValueError("slots must be >= 1")


@dataclass(frozen=True, slots=True)
class Sample:
    at: float
    demand: float  # in flight + queued, summed over the gateways


@dataclass(frozen=True, slots=True)
class ScaleDecision:
    replicas: int
    reason: str

    def changes(self, current: int) -> bool:
        return self.replicas != current


def recommend(spec: AutoscalingSpec, demand: float) -> int:
    """Replicas that keep ``demand`` at the target load (unclamped)."""
    if demand <= 0:
        return 0
    return math.ceil(demand / (spec.target_load * spec.slots))


def prune(samples: Sequence[Sample], spec: AutoscalingSpec, now: float) -> list[Sample]:
    """Samples still inside the longer window (plus the newest one before it)."""
    horizon = now - max(spec.scale_up_delay, spec.scale_down_delay)
    inside = [s for s in samples if s.at >= horizon]
    before = [s for s in samples if s.at < horizon]
    return ([before[-1]] if before else []) + inside


def _window(samples: Sequence[Sample], now: float, seconds: float) -> list[Sample]:
    """Samples of the last ``seconds``, with the one in force when the window opened."""
    start = now - seconds
    inside = [s for s in samples if s.at >= start]
    before = [s for s in samples if s.at < start]
    opened_with = before[-1:] if not inside or inside[0].at > start else []
    return opened_with + inside


def desired_replicas(
    spec: AutoscalingSpec, samples: Sequence[Sample], current: int, now: float
) -> ScaleDecision:
    """The replicas the pool should have now, and why (for status and the Event)."""
    if not samples:
        clamped = min(max(current, spec.min_replicas), spec.max_replicas)
        return ScaleDecision(
            clamped,
            "no demand reported yet" if clamped == current else "outside minReplicas..maxReplicas",
        )
    ordered = sorted(samples, key=lambda s: s.at)
    latest = recommend(spec, ordered[-1].demand)
    if current == 0 and ordered[-1].demand > 0:
        wanted = max(latest, 1)
        if spec.scale_up_delay > 0:
            wanted = max(1, min(wanted, _lowest(spec, ordered, now)))
        return _clamp(spec, wanted, "a request is waiting for a replica (scale from zero)")
    if latest > current:
        wanted = max(current, _lowest(spec, ordered, now))
        return _clamp(spec, wanted, f"load above target ({_load(spec, ordered[-1], current)})")
    if latest < current:
        window = _window(ordered, now, spec.scale_down_delay)
        if ordered[0].at > now - spec.scale_down_delay:
            return _clamp(spec, current, "waiting for a full scale-down window of demand")
        wanted = min(current, max(recommend(spec, s.demand) for s in window))
        reason = (
            "idle" if wanted == 0 else f"load below target ({_load(spec, ordered[-1], current)})"
        )
        return _clamp(spec, wanted, reason)
    return _clamp(spec, current, "load at target")


def _lowest(spec: AutoscalingSpec, ordered: Sequence[Sample], now: float) -> int:
    return min(recommend(spec, s.demand) for s in _window(ordered, now, spec.scale_up_delay))


def _load(spec: AutoscalingSpec, sample: Sample, replicas: int) -> str:
    capacity = max(replicas, 1) * spec.slots
    return f"{sample.demand:g} in flight or queued for {capacity} slots"


def _clamp(spec: AutoscalingSpec, wanted: int, reason: str) -> ScaleDecision:
    if wanted > spec.max_replicas:
        return ScaleDecision(spec.max_replicas, f"{reason}; capped at maxReplicas")
    if wanted < spec.min_replicas:
        return ScaleDecision(spec.min_replicas, f"{reason}; held at minReplicas")
    return ScaleDecision(wanted, reason)
