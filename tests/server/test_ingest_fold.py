"""Folding results into a check state: the shortcut that skips flap detection for a
stable check repeating itself must give the same flags as computing it every time, and
each result raises the event its transition calls for."""

from __future__ import annotations

import random
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from server.jobs.flapping import HISTORY_LENGTH, is_flapping
from server.jobs.state_fold import StateFold

START = datetime(2026, 1, 1, tzinfo=UTC)


def result_row(n: int, status: str) -> dict[str, object]:
    return {
        "result_id": str(uuid.uuid4()), "status": status, "exit_code": 0,
        "output": f"{status} {n}", "perfdata": [], "executed_at": START + timedelta(seconds=n),
    }


def fold_all(statuses: list[str]) -> list[bool]:
    fold = StateFold.of(None, START)
    flags = []
    for n, status in enumerate(statuses):
        fold.apply("t", "c", result_row(n, status))
        flags.append(fold.flapping)
    return flags


def reference(statuses: list[str]) -> list[bool]:
    history, flapping, flags = "", False, []
    for status in statuses:
        history = (history + status[0])[-HISTORY_LENGTH:]
        flapping = is_flapping(history, flapping)
        flags.append(flapping)
    return flags


@pytest.mark.parametrize("seed", range(200))
def test_fold_flags_flapping_exactly_like_the_detector(seed):
    rng = random.Random(seed)
    # Runs of random length: from constant flipping to long quiet stretches.
    statuses: list[str] = []
    while len(statuses) < 200:
        statuses += [rng.choice(["ok", "warning", "critical", "unknown"])] * rng.choice(
            [1, 1, 1, 2, 3, 5, 8, 13, 30]
        )
    assert fold_all(statuses) == reference(statuses)


def test_a_flapping_check_that_calms_down_stops_flapping():
    statuses = ["ok", "critical"] * 15 + ["ok"] * 40
    flags = fold_all(statuses)
    assert True in flags and flags[-1] is False
    assert flags == reference(statuses)


def test_a_history_that_fills_up_with_a_repeat_can_start_flapping():
    """Until the history holds 21 results nothing flaps; the result that fills it may be
    a repeat of the last status and still be the one that shows the flapping."""
    statuses = ["ok", "critical"] * 10 + ["critical"] * 3
    flags = fold_all(statuses)
    assert flags[HISTORY_LENGTH - 2] is False and flags[HISTORY_LENGTH - 1] is True
    assert flags == reference(statuses)


def test_each_result_raises_the_event_of_its_transition():
    fold = StateFold.of(None, START)
    statuses = ["ok", "ok", "critical"]
    raised = [fold.apply("t", "c", result_row(n, s)) for n, s in enumerate(statuses)]
    assert raised[1] is None
    first, change = raised[0], raised[2]
    assert first is not None and change is not None
    assert (first.kind, first.previous, first.current) == ("check_state", None, "ok")
    assert (change.kind, change.previous, change.current) == ("check_state", "ok", "critical")
    assert change.message == "critical 2" and change.dedupe_key is not None
    assert change.dedupe_key.startswith("state:t:c:")
    row = fold.row("t", "c")
    assert (row["status"], row["occurrences"]) == ("critical", 1)
    assert row["since"] == START + timedelta(seconds=2)
    assert row["history"] == "ooc"


def test_a_flip_that_starts_a_flap_raises_the_flapping_event_instead():
    fold = StateFold.of(None, START)
    statuses = ["ok", "critical"] * 15
    raised = [fold.apply("t", "c", result_row(n, s)) for n, s in enumerate(statuses)]
    flapping = [e for e in raised if e is not None and e.kind == "flapping"]
    assert [(e.previous, e.current) for e in flapping] == [("stable", "flapping")]
    after = raised[raised.index(flapping[0]) + 1 :]
    assert after and all(e is None for e in after)  # flips while flapping are not news


def test_a_result_no_newer_than_the_state_is_not_news():
    fold = StateFold.of(None, START)
    fold.apply("t", "c", result_row(10, "ok"))
    assert not fold.is_news(result_row(10, "critical"))
    assert not fold.is_news(result_row(5, "critical"))
    assert fold.is_news(result_row(11, "critical"))
