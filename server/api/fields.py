"""Marshmallow fields shared by the API schemas."""

from __future__ import annotations

import re
from typing import Any

from marshmallow import ValidationError, fields, validate

from agent.durations import parse_duration

LABEL_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-/]{0,62}$")
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
        keys=fields.String(),
        values=fields.String(validate=validate.Length(max=256)),
        validate=_check_labels,
        **kwargs,
    )


def Text(max_length: int, **kwargs: Any) -> fields.String:  # noqa: N802
    return fields.String(validate=validate.Length(max=max_length), **kwargs)


def Name(max_length: int = 255, **kwargs: Any) -> fields.String:  # noqa: N802
    return fields.String(validate=validate.Length(min=1, max=max_length), **kwargs)


SLUG = validate.Regexp(
    r"^[a-z0-9][a-z0-9_.\-]{0,63}$",
    error="use 1-64 lowercase letters, digits, '_', '.', '-', starting with a letter or digit",
)
