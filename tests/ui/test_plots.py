"""Geometry of the target page's plots and the formatting shared by pages and live feed."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from server.models import CheckResult
from server.ui import formatting, plots

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def make(check_id: str, status: str, minutes_ago: float, perfdata: Any = None) -> CheckResult:
    return CheckResult(
        result_id=f"{check_id}-{minutes_ago}",
        executed_at=NOW - timedelta(minutes=minutes_ago),
        target_id="t",
        check_id=check_id,
        status=status,
        exit_code=0,
        output="",
        perfdata=perfdata or [],
    )


def test_timeline_gives_each_result_the_span_until_the_next_one() -> None:
    # Newest first, as the queries return them.
    history = {"disk": [make("disk", "critical", 2), make("disk", "ok", 6), make("disk", "ok", 10)]}
    timeline = plots.status_timeline(history, NOW)
    assert timeline is not None
    assert (timeline.start, timeline.end) == (NOW - timedelta(minutes=10), NOW)
    [row] = timeline.rows
    assert [(s.status, s.x, s.width) for s in row.segments] == [
        ("ok", 0.0, 400.0), ("ok", 400.0, 400.0), ("critical", 800.0, 200.0)
    ]
    assert row.segments[-1].title.startswith("disk: Critical at 2026-03-01 11:58:00 UTC")


def test_timeline_shares_one_time_axis_between_checks() -> None:
    history = {"a": [make("a", "ok", 10)], "b": [make("b", "warning", 5)], "c": []}
    timeline = plots.status_timeline(history, NOW)
    assert timeline is not None
    assert [row.check_id for row in timeline.rows] == ["a", "b"]
    assert timeline.rows[1].segments[0].x == 500.0
    assert plots.status_timeline({"a": []}, NOW) is None


def perf(value: float, **extra: Any) -> list[dict[str, Any]]:
    return [{"label": "used", "value": value, "uom": "%", **extra}, {"label": "other", "value": 1}]


def test_perf_chart_scales_values_from_zero_to_a_round_maximum() -> None:
    results = [
        make("disk", "ok", 2, perf(80.0, warn=85, crit="95")),
        make("disk", "ok", 4, perf(40.0)),
    ]
    chart = plots.perf_chart(results, "used")
    assert chart is not None
    assert (chart.low, chart.high, chart.latest, chart.uom) == (0.0, 100.0, 80.0, "%")
    assert [(p.x, p.y) for p in chart.points] == [(0.0, 120.0), (1000.0, 40.0)]
    assert chart.line == "0.00,120.00 1000.00,40.00"
    assert chart.area == "0.00,200 0.00,120.00 1000.00,40.00 1000.00,200"
    assert [(t.name, t.value, t.y) for t in chart.thresholds] == [
        ("crit", 95.0, 10.0), ("warn", 85.0, 30.0)
    ]
    assert chart.fmt(chart.middle) == "50%"


def test_perf_chart_skips_missing_values_and_unplottable_thresholds() -> None:
    results = [
        make("x", "ok", 1, [{"label": "used", "value": None}]),
        make("x", "ok", 2, perf(3.0, warn="10:20", crit=True)),
    ]
    chart = plots.perf_chart(results, "used")
    assert chart is not None
    assert len(chart.points) == 1 and chart.thresholds == []
    y = chart.points[0].y
    assert chart.line == f"0.00,{y:.2f} 1000.00,{y:.2f}"  # one sample: a level line
    assert plots.perf_chart(results, "missing") is None


def test_perf_labels_lists_numeric_values_in_plugin_order() -> None:
    results = [
        make("x", "ok", 1, perf(1.0)),
        make("x", "ok", 2, [{"label": "text", "value": "n/a"}]),
    ]
    assert plots.perf_labels(results) == ["used", "other"]


def test_nice_axis_ends() -> None:
    assert [plots._nice(v) for v in (0.42, 0.9, 3.1, 93.7, 101.0, 2400.0)] == [
        0.5, 1.0, 5.0, 100.0, 200.0, 2500.0
    ]


def test_relative_times_and_durations_read_like_the_script_writes_them() -> None:
    assert formatting.ago(NOW - timedelta(seconds=42), NOW) == "42s ago"
    assert formatting.ago(NOW - timedelta(minutes=4, seconds=8), NOW) == "4m 8s ago"
    assert formatting.ago(NOW - timedelta(minutes=23, seconds=8), NOW) == "23m ago"
    assert formatting.ago(NOW - timedelta(hours=3, minutes=20), NOW) == "3h 20m ago"
    assert formatting.ago(NOW - timedelta(days=2, hours=1), NOW) == "2d 1h ago"
    assert formatting.ago(None, NOW) == "never"
    assert formatting.duration(NOW - timedelta(minutes=40), NOW) == "40m"
    assert formatting.iso(NOW) == "2026-03-01T12:00:00Z"
    assert formatting.clock(NOW - timedelta(hours=1), NOW) == "11:00 UTC"
    assert formatting.clock(NOW - timedelta(days=1), NOW) == "02-28 12:00 UTC"


def test_perfdata_and_status_words() -> None:
    item = {"label": "used", "value": 71.25, "uom": "%", "warn": 85, "crit": 95.0, "max": 100}
    assert formatting.perf_item(item) == "used=71.25% (warn 85, crit 95, max 100)"
    assert formatting.perf_item({"label": "x", "value": None}) == "x=U"
    assert formatting.status_label("critical") == "Critical"
    assert formatting.status_label(None) == "Pending"
    assert formatting.interval(60.0) == "1m" and formatting.interval(0.5) == "0.5s"
