"""Geometry for the target page's inline SVG plots, computed here and drawn by Jinja.

Both plots use a fixed user space (``WIDTH`` x ``HEIGHT``) stretched to the box the CSS
gives them (``preserveAspectRatio="none"``); lines keep their width with
``vector-effect: non-scaling-stroke``. Text stays in HTML around the SVG, so it neither
stretches nor shrinks on a phone.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from server.models import CheckResult
from server.ui.formatting import abstime, number, status_label, utc

WIDTH = 1000.0
HEIGHT = 200.0


@dataclass(frozen=True)
class Segment:
    x: float
    width: float
    status: str
    title: str


@dataclass(frozen=True)
class TimelineRow:
    check_id: str
    segments: list[Segment]


@dataclass(frozen=True)
class Timeline:
    rows: list[TimelineRow]
    start: datetime
    end: datetime


def _x(when: datetime, start: datetime, end: datetime) -> float:
    total = (end - start).total_seconds() or 1.0
    return max(0.0, min(WIDTH, (when - start).total_seconds() / total * WIDTH))


def status_timeline(
    histories: Mapping[str, Sequence[CheckResult]], now: datetime
) -> Timeline | None:
    """One strip per check: each result's status from when it ran until the next result
    (the newest until ``now``). ``histories`` are newest first, as the queries give them."""
    ordered = {cid: sorted(rs, key=lambda r: r.executed_at) for cid, rs in histories.items() if rs}
    if not ordered:
        return None
    start = min(utc(rs[0].executed_at) for rs in ordered.values())
    end = max(utc(now), start + timedelta(minutes=1))
    rows = []
    for check_id in sorted(ordered):
        results = ordered[check_id]
        segments = []
        for i, result in enumerate(results):
            began = utc(result.executed_at)
            until = utc(results[i + 1].executed_at) if i + 1 < len(results) else end
            x0, x1 = _x(began, start, end), _x(until, start, end)
            segments.append(
                Segment(
                    x=round(x0, 2),
                    # A result replaced within the same pixel still shows as a sliver.
                    width=round(max(x1 - x0, 0.6), 2),
                    status=result.status,
                    title=f"{check_id}: {status_label(result.status)} at {abstime(began)}",
                )
            )
        rows.append(TimelineRow(check_id, segments))
    return Timeline(rows=rows, start=start, end=end)


# --------------------------------------------------------------------------- perf values


@dataclass(frozen=True)
class Point:
    x: float
    y: float
    title: str


@dataclass(frozen=True)
class Threshold:
    name: str
    value: float
    y: float


@dataclass
class PerfChart:
    label: str
    uom: str
    points: list[Point]
    low: float
    high: float
    start: datetime
    end: datetime
    latest: float
    thresholds: list[Threshold] = field(default_factory=list)

    def _coords(self) -> list[tuple[float, float]]:
        if len(self.points) == 1:  # one sample: a level line, since a dot would stretch
            return [(0.0, self.points[0].y), (WIDTH, self.points[0].y)]
        return [(p.x, p.y) for p in self.points]

    @property
    def line(self) -> str:
        """The ``points`` of the SVG polyline."""
        return " ".join(f"{x:.2f},{y:.2f}" for x, y in self._coords())

    @property
    def area(self) -> str:
        """The ``points`` of the polygon that shades the space under the line."""
        coords = self._coords()
        return f"{coords[0][0]:.2f},{HEIGHT:g} {self.line} {coords[-1][0]:.2f},{HEIGHT:g}"

    @property
    def hit_width(self) -> float:
        """Width of the invisible boxes that carry each point's tooltip."""
        return max(WIDTH / max(len(self.points), 1), 4.0)

    @property
    def middle(self) -> float:
        return (self.low + self.high) / 2

    def fmt(self, value: float) -> str:
        return f"{number(value)}{self.uom}"


def perf_labels(results: Sequence[CheckResult]) -> list[str]:
    """Labels with a numeric value in any of ``results``, in the order the plugin prints them."""
    seen: dict[str, None] = {}
    for result in results:
        for item in result.perfdata or []:
            if isinstance(item, dict) and isinstance(item.get("value"), int | float):
                seen.setdefault(str(item.get("label")), None)
    return list(seen)


def _threshold(raw: Any) -> float | None:
    """A plain number threshold (``80``); Nagios ranges like ``10:20`` are not drawn."""
    if isinstance(raw, bool):
        return None
    if isinstance(raw, int | float):
        return float(raw)
    try:
        return float(str(raw))
    except (TypeError, ValueError):
        return None


def _nice(value: float) -> float:
    """The smallest of 1, 2, 2.5, 5 times a power of ten that is at least ``value`` (> 0)."""
    if value <= 0:
        return 0.0
    power = 10.0 ** math.floor(math.log10(value))
    for step in (1.0, 2.0, 2.5, 5.0, 10.0):
        if value <= step * power * (1 + 1e-9):
            return step * power
    return 10.0 * power


def perf_chart(results: Sequence[CheckResult], label: str) -> PerfChart | None:
    """The value ``label`` over ``results`` (newest first); None if it has no numbers."""
    samples: list[tuple[datetime, float]] = []
    uom = ""
    limits: dict[str, float] = {}
    for result in sorted(results, key=lambda r: r.executed_at):
        for item in result.perfdata or []:
            if not isinstance(item, dict) or str(item.get("label")) != label:
                continue
            value = item.get("value")
            if isinstance(value, bool) or not isinstance(value, int | float):
                continue
            when = utc(result.executed_at)
            samples.append((when, float(value)))
            uom = str(item.get("uom") or "")
            for name in ("warn", "crit"):
                threshold = _threshold(item.get(name))
                if threshold is not None:
                    limits[name] = threshold  # the newest result's thresholds win
    if not samples:
        return None
    values = [v for _, v in samples]
    # Round axis ends, from zero for the usual non-negative measures; a little headroom
    # keeps the top value off the frame.
    low = -_nice(-min(values)) if min(values) < 0 else 0.0
    high = _nice(max(values) * 1.04) if max(values) > 0 else 0.0
    if high == low:
        high = low + 1.0
    start, end = samples[0][0], samples[-1][0]
    if end == start:
        end = start + timedelta(seconds=1)

    def y(value: float) -> float:
        return round(HEIGHT - (value - low) / (high - low) * HEIGHT, 2)

    points = [
        Point(
            x=round(_x(when, start, end), 2),
            y=y(value),
            title=f"{abstime(when)}: {label}={number(value)}{uom}",
        )
        for when, value in samples
    ]
    thresholds = [
        Threshold(name, value, y(value))
        for name, value in sorted(limits.items())
        if low <= value <= high
    ]
    return PerfChart(
        label=label,
        uom=uom,
        points=points,
        low=low,
        high=high,
        start=start,
        end=end,
        latest=values[-1],
        thresholds=thresholds,
    )
