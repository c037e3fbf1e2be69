"""Duration values as users write them in config and the server sends them: ``"30s"``, ``"1m30s"``.

The grammar is deliberately small: one or more ``<number><unit>`` parts with the units
``ms``, ``s``, ``m`` and ``h``, or a plain non-negative number meaning seconds.
"""

from __future__ import annotations

import math
import re

_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}

# "ms" must come before "m" and "s" in the alternation, or "500ms" would match "500m" + junk.
_PART = re.compile(r"(\d+(?:\.\d+)?|\.\d+)(ms|h|m|s)")
_PLAIN_NUMBER = re.compile(r"\d+(?:\.\d+)?|\.\d+")


def parse_duration(value: str | int | float) -> float:
    """Return ``value`` in seconds.

    Accepts ``"500ms"``, ``"30s"``, ``"5m"``, ``"1h"``, compounds such as ``"1h30m"`` or
    ``"1m30s"``, and plain numbers (``30``, ``2.5``, ``"45"``) meaning seconds.
    Raises ``ValueError`` naming the bad value for anything else: negative numbers,
    empty strings, unknown units, booleans, NaN or infinity.
    """
    # bool is a subclass of int: `timeout: true` in YAML is a mistake, not one second.
    if isinstance(value, bool):
        raise ValueError(f"invalid duration {value!r}: expected e.g. '500ms', '30s', '5m', '1h'")
    if isinstance(value, int | float):
        return _check_number(float(value), value)
    if not isinstance(value, str):
        raise ValueError(
            f"invalid duration {value!r}: expected a string such as '30s' or a number of seconds"
        )

    text = value.strip()
    if not text:
        raise ValueError("invalid duration '': empty; expected e.g. '500ms', '30s', '5m', '1h'")
    if _PLAIN_NUMBER.fullmatch(text):
        return _check_number(float(text), value)

    total = 0.0
    position = 0
    seen_units: set[str] = set()
    for match in _PART.finditer(text):
        # finditer skips over garbage; insisting that parts are contiguous rejects "1m x 30s".
        if match.start() != position:
            break
        number, unit = match.groups()
        if unit in seen_units:
            raise ValueError(f"invalid duration {value!r}: unit {unit!r} given twice")
        seen_units.add(unit)
        total += float(number) * _UNIT_SECONDS[unit]
        position = match.end()
    if position != len(text) or position == 0:
        raise ValueError(
            f"invalid duration {value!r}: expected a number with a unit "
            "(ms, s, m, h), e.g. '500ms', '30s', '1m30s'"
        )
    return total


def format_duration(seconds: float) -> str:
    """A short human form of ``seconds`` for messages: 10 -> ``10s``, 0.5 -> ``0.5s``."""
    return f"{seconds:g}s"


def _check_number(number: float, original: object) -> float:
    if math.isnan(number) or math.isinf(number):
        raise ValueError(f"invalid duration {original!r}: must be a finite number of seconds")
    if number < 0:
        raise ValueError(f"invalid duration {original!r}: must not be negative")
    return number
