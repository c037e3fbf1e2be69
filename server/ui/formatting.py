"""How values read on the pages: status words, times, durations, performance data.

Templates use these as Jinja filters; the live JSON uses the same functions, so a cell
updated by the page's script reads exactly like the one the server rendered.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any

TARGET_STATUSES = ("online", "stale", "offline", "pending")
CHECK_STATUSES = ("ok", "warning", "critical", "unknown")
# Worst first: the order problems are listed in.
CHECK_SEVERITY = {"critical": 0, "unknown": 1, "warning": 2, "pending": 3, "ok": 4}

STATUS_LABELS = {
    "ok": "OK",
    "warning": "Warning",
    "critical": "Critical",
    "unknown": "Unknown",
    "pending": "Pending",
    "online": "Online",
    "stale": "Stale",
    "offline": "Offline",
}


def status_label(status: str | None) -> str:
    if not status:
        return "Pending"
    return STATUS_LABELS.get(status, status.capitalize())


def utc(value: datetime) -> datetime:
    """Aware and in UTC (a naive value is taken to be UTC already)."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def status_json(status: str | None) -> dict[str, str]:
    """A status as the live feeds carry it: the value (for the colour) and its word."""
    return {"status": status or "pending", "label": status_label(status)}


def as_utc(value: datetime | None) -> datetime | None:
    return None if value is None else utc(value)


def iso(value: datetime | None) -> str | None:
    """ISO 8601 in UTC with a ``Z``, what ``<time datetime>`` and scripts read."""
    value = as_utc(value)
    return None if value is None else value.isoformat(timespec="seconds").replace("+00:00", "Z")


def abstime(value: datetime | None) -> str:
    value = as_utc(value)
    return "never" if value is None else value.strftime("%Y-%m-%d %H:%M:%S UTC")


def clock(value: datetime | None, now: datetime | None = None) -> str:
    """A short time for plot axes: ``14:05 UTC`` today, ``11-20 14:05 UTC`` before."""
    value = as_utc(value)
    if value is None:
        return ""
    today = (now or datetime.now(UTC)).astimezone(UTC).date()
    return value.strftime("%H:%M UTC" if value.date() == today else "%m-%d %H:%M UTC")


def span(seconds: float) -> str:
    """``45s``, ``12m``, ``3h 20m``, ``4d 2h``: two units at most."""
    seconds = max(0, int(seconds))
    if seconds < 60:
        return f"{seconds}s"
    minutes, secs = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m" if minutes >= 10 or not secs else f"{minutes}m {secs}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours}h {minutes}m" if minutes else f"{hours}h"
    days, hours = divmod(hours, 24)
    return f"{days}d {hours}h" if hours else f"{days}d"


def ago(value: datetime | None, now: datetime | None = None) -> str:
    value = as_utc(value)
    if value is None:
        return "never"
    delta = ((now or datetime.now(UTC)) - value).total_seconds()
    if delta < 1:
        return "just now"
    return f"{span(delta)} ago"


def duration(value: datetime | None, now: datetime | None = None) -> str:
    """How long since ``value``, without "ago": for "in this state for ..." columns."""
    value = as_utc(value)
    if value is None:
        return ""
    return span(((now or datetime.now(UTC)) - value).total_seconds())


def interval(seconds: float | None) -> str:
    if seconds is None:
        return ""
    if seconds < 60 and seconds != int(seconds):
        return f"{seconds:g}s"
    return span(seconds).replace(" ", "")


def number(value: Any) -> str:
    """A performance value without noise: ``0.52``, ``1200``, ``3.1e-05``."""
    if isinstance(value, bool) or value is None:
        return "" if value is None else str(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            return str(value)
        return f"{value:.6g}"
    return str(value)


def perf_item(item: dict[str, Any]) -> str:
    """One Nagios perfdata value: ``load1=0.52`` or ``used=71% (warn 85, crit 95, max 100)``."""
    label = str(item.get("label", "?"))
    value = item.get("value")
    text = f"{label}={number(value) if value is not None else 'U'}{item.get('uom') or ''}"
    extras = [
        f"{name} {number(item[key])}"
        for key, name in (("warn", "warn"), ("crit", "crit"), ("min", "min"), ("max", "max"))
        if item.get(key) not in (None, "")
    ]
    return f"{text} ({', '.join(extras)})" if extras else text


def perf_items(perfdata: list[dict[str, Any]] | None) -> list[str]:
    return [perf_item(item) for item in perfdata or [] if isinstance(item, dict)]


def labels_text(labels: dict[str, Any] | None) -> list[str]:
    return [f"{key}={value}" for key, value in sorted((labels or {}).items())]
