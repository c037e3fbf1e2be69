"""Flap detection as Nagios and Icinga do it: weighted percent state change.

The last 21 results give 20 possible changes. Newer changes weigh more (0.8 for the
oldest up to 1.2 for the newest), so a check that has just calmed down stops flapping
sooner than one that has just started to flap. A check starts flapping above the high
threshold and stops below the low one; between them it keeps its flag (hysteresis), so
one borderline result cannot toggle the flag back and forth.
"""

from __future__ import annotations

HISTORY_LENGTH = 21
LOW_THRESHOLD = 25.0
HIGH_THRESHOLD = 50.0


def percent_state_change(history: str) -> float:
    """``history`` is one letter per result, oldest first (``o``, ``w``, ``c``, ``u``)."""
    recent = history[-HISTORY_LENGTH:]
    transitions = len(recent) - 1
    if transitions < 1:
        return 0.0
    weighted = 0.0
    for i in range(1, len(recent)):
        if recent[i] != recent[i - 1]:
            weighted += 0.8 + 0.4 * (i - 1) / max(transitions - 1, 1)
    return 100.0 * weighted / (HISTORY_LENGTH - 1)


def is_flapping(
    history: str, was_flapping: bool, low: float = LOW_THRESHOLD, high: float = HIGH_THRESHOLD
) -> bool:
    if len(history) < HISTORY_LENGTH:
        return was_flapping and percent_state_change(history) >= low
    change = percent_state_change(history)
    if was_flapping:
        return change >= low
    return change > high
