"""Folding results into a check state: the shortcut that skips flap detection for a
stable check repeating itself must give the same flags as computing it every time."""

from __future__ import annotations

import random
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from server.jobs.flapping import HISTORY_LENGTH, is_flapping
from server.jobs.ingest import _Fold

START = datetime(2026, 1, 1, tzinfo=UTC)


def fold_all(statuses: list[str]) -> list[bool]:
    fold = _Fold.of(None)
    flags = []
    for n, status in enumerate(statuses):
        row = {
            "result_id": str(uuid.uuid4()), "status": status, "exit_code": 0, "output": "",
            "perfdata": [], "executed_at": START + timedelta(seconds=n),
        }
        fold.apply(None, "t", "c", row, quiet=True)  # type: ignore[arg-type]  # quiet: no events
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
