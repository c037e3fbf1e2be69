"""Marshmallow fields shared by the API schemas."""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime
from typing import Any

from marshmallow import ValidationError, fields, validate

from agent.durations import parse_duration

# "$(?!\n)": Python's "$" also matches before a final newline, JavaScript's (the OpenAPI
# document's dialect) does not; with the lookahead both mean the end of the text.
LABEL_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-/]{0,62}$(?!\n)")
MAX_LABELS = 64


def format_duration(seconds: float) -> str:
    """The shortest usual spelling: ``1h``, ``5m``, ``30s``, ``1500ms``."""
    millis = round(seconds * 1000)
    if millis % 1000:
        return f"{millis}ms"
    whole = millis // 1000
    for unit, size in (("h", 3600), ("m", 60)):
        if whole and whole % size == 0:
            return f"{whole // size}{unit}"
    return f"{whole}s"


# Units a duration string may carry, in seconds; the documented pattern covers one unit.
_DURATION_UNITS = (("ms", 0.001), ("s", 1), ("m", 60), ("h", 3600))


def _digits_between(low: str, high: str) -> list[str]:
    """Regex pieces for the whole numbers from ``low`` to ``high``, both of one length."""
    if low == high:
        return [low]
    if low.strip("0") == "" and high.strip("9") == "":
        return ["[0-9]" * len(low)]
    if low[0] == high[0]:
        return [low[0] + rest for rest in _digits_between(low[1:], high[1:])]
    width = len(low) - 1
    if low[1:].strip("0") == "" and high[1:].strip("9") == "":
        return [f"[{low[0]}-{high[0]}]" + "[0-9]" * width]
    pieces = [low[0] + rest for rest in _digits_between(low[1:], "9" * width)]
    between = range(int(low[0]) + 1, int(high[0]))
    if between:
        pieces.append(f"[{between[0]}-{between[-1]}]" + "[0-9]" * width)
    pieces += [high[0] + rest for rest in _digits_between("0" * width, high[1:])]
    return pieces


def integer_range_pattern(low: int, high: int) -> str:
    """A regex (no anchors) for exactly the whole numbers ``low..high``, written plainly."""
    pieces: list[str] = []
    while low <= high:
        top = min(high, 10 ** len(str(low)) - 1)
        pieces += _digits_between(str(low), str(top))
        low = top + 1
    return "(?:" + "|".join(pieces) + ")"


def duration_pattern(minimum: float, maximum: float) -> str:
    """The durations within bounds that a client can rely on, as one regex: a whole number
    and one unit (``90s``, ``5m``). The server also takes compounds and decimals."""
    choices = []
    for unit, size in _DURATION_UNITS:
        low, high = math.ceil(minimum / size - 1e-9), math.floor(maximum / size + 1e-9)
        if low <= high:
            choices.append(integer_range_pattern(low, high) + unit)
    # Surrounding white space is stripped by the server, so it is no violation either.
    return r"^\s*(?:" + "|".join(choices) + r")\s*$"


class Duration(fields.Field):
    """``"500ms"``, ``"30s"``, ``"5m"``, ``"1h"`` or a number of seconds; loads as seconds."""

    def __init__(self, *, minimum: float, maximum: float, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.minimum = minimum
        self.maximum = maximum
        self.metadata.setdefault("type", "string")
        self.metadata.setdefault("example", "30s")

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> float:
        try:
            seconds = parse_duration(value)
        except ValueError as exc:
            raise ValidationError(str(exc)) from None
        if not self.minimum <= seconds <= self.maximum:
            raise ValidationError(
                f"must be between {format_duration(self.minimum)} and "
                f"{format_duration(self.maximum)}"
            )
        return seconds

    def _serialize(self, value: Any, attr: str | None, obj: Any, **kwargs: Any) -> str | None:
        return None if value is None else format_duration(float(value))


class Timestamp(fields.AwareDateTime):
    """An ISO 8601 date-time (UTC when it names no offset), loaded as UTC.

    ``9999-12-31T23:59:59-14:00`` parses, but lies past the last instant Python (and so every
    query or column holding it) can represent once in UTC: refused here with the field named
    instead of overflowing in a query.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(default_timezone=UTC, **kwargs)

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> datetime:
        parsed = super()._deserialize(value, attr, data, **kwargs)
        try:
            return parsed.astimezone(UTC)
        except OverflowError:
            raise ValidationError(
                "lies outside the dates the server can store (years 1 to 9999 in UTC)"
            ) from None


class WholeNumber(fields.Integer):
    """An integer as JSON Schema (and so the OpenAPI document) means one: ``2.0`` is 2, but
    ``2.5`` is refused rather than truncated, and ``true`` is no number."""

    def _validated(self, value: Any) -> int:
        if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
            raise self.make_error("invalid")
        return super()._validated(value)


class Flag(fields.Boolean):
    """``true`` or ``false``, as the document says; not 0, 1, "yes" or "on"."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> bool:
        if not isinstance(value, bool):
            raise self.make_error("invalid", input=value)
        return value


def _check_labels(value: dict[str, str]) -> None:
    if len(value) > MAX_LABELS:
        raise ValidationError(f"at most {MAX_LABELS} labels")
    bad = [k for k in value if not LABEL_KEY.match(k)]
    if bad:
        raise ValidationError(
            f"invalid label names {bad[:5]}: use letters, digits, '_', '.', '-', '/' (max 63)"
        )


def Labels(**kwargs: Any) -> fields.Dict:  # noqa: N802 - reads like a field class
    return fields.Dict(
        # The rules _check_labels enforces, stated for the OpenAPI document.
        keys=fields.String(metadata={"pattern": LABEL_KEY.pattern}),
        values=fields.String(validate=validate.Length(max=256)),
        validate=_check_labels,
        metadata={"maxProperties": MAX_LABELS},
        **kwargs,
    )


def Text(max_length: int, **kwargs: Any) -> fields.String:  # noqa: N802
    return fields.String(validate=validate.Length(max=max_length), **kwargs)


def Name(max_length: int = 255, **kwargs: Any) -> fields.String:  # noqa: N802
    return fields.String(validate=validate.Length(min=1, max=max_length), **kwargs)


SLUG = validate.Regexp(
    r"^[a-z0-9][a-z0-9_.\-]{0,63}$(?!\n)",
    error="use 1-64 lowercase letters, digits, '_', '.', '-', starting with a letter or digit",
)
