"""agent/backoff.py: capped exponential backoff with full jitter and a Retry-After floor."""

from __future__ import annotations

import random

import pytest

from agent.backoff import Backoff


class MaxRandom(random.Random):
    """Always picks the top of the range, to see the ceiling."""

    def uniform(self, a: float, b: float) -> float:
        return b


def test_ceiling_doubles_per_attempt_up_to_the_cap() -> None:
    backoff = Backoff(base=1.0, cap=10.0, rng=MaxRandom())
    assert [backoff.next_delay() for _ in range(6)] == [1.0, 2.0, 4.0, 8.0, 10.0, 10.0]
    assert backoff.attempts == 6


def test_full_jitter_stays_between_zero_and_the_ceiling() -> None:
    backoff = Backoff(base=1.0, cap=30.0, rng=random.Random(42))
    delays = [backoff.next_delay() for _ in range(200)]
    assert all(0 <= d <= 30.0 for d in delays)
    assert len(set(delays)) > 150  # jittered, not a fixed schedule
    assert min(delays[10:]) < 5  # full jitter: small waits stay possible late on


def test_reset_after_success_starts_over() -> None:
    backoff = Backoff(base=1.0, cap=60.0, rng=MaxRandom())
    for _ in range(5):
        backoff.next_delay()
    backoff.reset()
    assert backoff.attempts == 0
    assert backoff.next_delay() == 1.0


def test_retry_after_is_a_floor_with_a_little_spread() -> None:
    backoff = Backoff(base=1.0, cap=60.0, rng=random.Random(1))
    delays = [backoff.next_delay(retry_after=20.0) for _ in range(50)]
    assert all(20.0 <= d <= 22.0 for d in delays[:5])  # never sooner than the server said


def test_retry_after_beyond_the_cap_is_still_honoured() -> None:
    backoff = Backoff(base=1.0, cap=10.0, rng=random.Random(1))
    assert backoff.next_delay(retry_after=120.0) >= 120.0


def test_backoff_never_gives_up() -> None:
    backoff = Backoff(base=0.5, cap=5.0, rng=random.Random(3))
    for _ in range(10_000):
        assert 0 <= backoff.next_delay() <= 5.0


@pytest.mark.parametrize(("base", "cap"), [(0, 1), (-1, 1), (5, 1)])
def test_invalid_parameters_are_refused(base: float, cap: float) -> None:
    with pytest.raises(ValueError):
        Backoff(base=base, cap=cap)
