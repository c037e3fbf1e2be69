import pytest

from server.jobs.flapping import HISTORY_LENGTH, is_flapping, percent_state_change


def test_steady_history_has_no_state_change():
    assert percent_state_change("o" * HISTORY_LENGTH) == 0.0


def test_alternating_history_is_fully_changing():
    assert percent_state_change("oc" * 10 + "o") == pytest.approx(100.0)


def test_recent_changes_weigh_more_than_old_ones():
    old_flip = "c" + "o" * 20
    new_flip = "o" * 20 + "c"
    assert percent_state_change(new_flip) > percent_state_change(old_flip)


def test_flapping_starts_above_high_threshold_and_needs_full_history():
    assert not is_flapping("oc" * 5, was_flapping=False)  # too little history to judge
    assert is_flapping("oc" * 10 + "o", was_flapping=False)


def test_hysteresis_keeps_flag_between_thresholds():
    # About 40 % change: below the high threshold, above the low one.
    history = "o" * 15 + "cococo"
    change = percent_state_change(history)
    assert 25 < change < 50
    assert is_flapping(history, was_flapping=True)
    assert not is_flapping(history, was_flapping=False)


def test_flapping_stops_below_low_threshold():
    assert not is_flapping("oc" + "o" * 19, was_flapping=True)
