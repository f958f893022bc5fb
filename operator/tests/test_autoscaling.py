"""The autoscaler's decision, replayed from demand samples (no cluster, no clock)."""

from __future__ import annotations

import pytest

from tollgate_operator.autoscaling import (
    AutoscalingSpec,
    Sample,
    desired_replicas,
    prune,
    recommend,
)

SPEC = AutoscalingSpec(
    min_replicas=0,
    max_replicas=4,
    target_load=1.0,
    scale_up_delay=0,
    scale_down_delay=60,
    slots=2,
)


def flat(demand: float, start: float, end: float, step: float = 10) -> list[Sample]:
    out = []
    t = start
    while t <= end:
        out.append(Sample(t, demand))
        t += step
    return out


def test_recommendation_keeps_load_at_target() -> None:
    assert [recommend(SPEC, d) for d in (0, 0.5, 2, 2.1, 8, 100)] == [0, 1, 1, 2, 4, 50]
    assert recommend(AutoscalingSpec(0, 4, target_load=0.5, slots=2), 2) == 2


def test_first_request_wakes_a_pool_at_zero_at_once() -> None:
    decision = desired_replicas(SPEC, [Sample(100, 1)], current=0, now=100)
    assert decision.replicas == 1
    assert "scale from zero" in decision.reason


def test_sustained_load_grows_to_max_and_no_further() -> None:
    decision = desired_replicas(SPEC, flat(40, 0, 100), current=2, now=100)
    assert decision.replicas == 4
    assert "capped at maxReplicas" in decision.reason


def test_a_burst_inside_the_up_delay_does_not_scale() -> None:
    spec = AutoscalingSpec(1, 4, target_load=1.0, scale_up_delay=30, scale_down_delay=60, slots=2)
    samples = [*flat(2, 0, 90), Sample(100, 8)]
    assert desired_replicas(spec, samples, current=1, now=100).replicas == 1
    sustained = [*flat(2, 0, 60), *flat(8, 70, 100)]
    assert desired_replicas(spec, sustained, current=1, now=100).replicas == 4


def test_scale_down_waits_for_a_whole_quiet_delay_then_goes_to_min() -> None:
    busy_then_quiet = [*flat(8, 0, 50), *flat(0, 60, 100)]
    held = desired_replicas(SPEC, busy_then_quiet, current=4, now=100)
    assert held.replicas == 4  # the window (40..100) still holds busy samples
    later = desired_replicas(SPEC, [*busy_then_quiet, *flat(0, 110, 120)], current=4, now=120)
    assert (later.replicas, later.reason) == (0, "idle")


def test_scale_down_steps_to_the_windows_peak() -> None:
    samples = [*flat(8, 0, 30), *flat(3, 40, 120)]
    assert desired_replicas(SPEC, samples, current=4, now=120).replicas == 2


def test_short_history_after_a_restart_never_scales_down() -> None:
    decision = desired_replicas(SPEC, flat(0, 90, 100), current=3, now=100)
    assert decision.replicas == 3
    assert "full scale-down window" in decision.reason


def test_min_replicas_and_no_samples() -> None:
    spec = AutoscalingSpec(1, 3, scale_down_delay=10)
    assert desired_replicas(spec, flat(0, 0, 100), current=2, now=100).replicas == 1
    at_min = desired_replicas(spec, flat(0, 0, 100), current=1, now=100)
    assert (at_min.replicas, at_min.reason) == (1, "idle; held at minReplicas")
    assert desired_replicas(spec, [], current=0, now=5).replicas == 1
    unchanged = desired_replicas(spec, [], current=2, now=5)
    assert (unchanged.replicas, unchanged.changes(2)) == (2, False)


def test_prune_keeps_the_sample_in_force_at_the_horizon() -> None:
    samples = flat(1, 0, 200)
    kept = prune(samples, SPEC, now=200)
    assert kept[0].at == 130 and kept[-1].at == 200


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((2, 1), "minReplicas"),
        ((0, 0), "maxReplicas must be >= 1"),
        ((-1, 1), "minReplicas"),
    ],
)
def test_invalid_specs(args: tuple[int, int], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        AutoscalingSpec(*args)
    with pytest.raises(ValueError, match="target"):
        AutoscalingSpec(0, 1, target_load=0)
