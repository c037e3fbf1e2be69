"""What the simulated fleet measures: latency and outcome per request kind, per window."""

from __future__ import annotations

import math
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

# Request kinds, in report order. "poll" is a parked long-poll (its duration is the wait
# the server chose, not a latency); "assignment" is a fetch that must answer at once.
KINDS = ("register", "heartbeat", "results", "assignment", "poll", "refresh")
LATENCY_KINDS = ("heartbeat", "results", "assignment", "register", "refresh")


def percentile(values: list[float], q: float) -> float | None:
    """The q-th percentile (0..100) by nearest rank; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


@dataclass
class Window:
    """Everything recorded between :meth:`Recorder.begin` and :meth:`Recorder.end`."""

    started: float
    ended: float = 0.0
    latencies: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    outcomes: dict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    loop_lag: list[float] = field(default_factory=list)
    # (seconds into the window, latency) of every answered request: where the tail is.
    timeline: list[tuple[float, float]] = field(default_factory=list)

    def worst_seconds(self, top: int = 5) -> list[tuple[int, float, int]]:
        """The ``top`` seconds of the window with the highest p99: (second, p99 ms, n)."""
        buckets: dict[int, list[float]] = defaultdict(list)
        for at, latency in self.timeline:
            buckets[int(at)].append(latency)
        ranked = sorted(((sec, percentile(v, 99) or 0.0, len(v)) for sec, v in buckets.items()),
                        key=lambda item: -item[1])
        return [(sec, round(p99 * 1000, 1), n) for sec, p99, n in ranked[:top]]

    @property
    def seconds(self) -> float:
        return (self.ended or time.monotonic()) - self.started

    def requests(self) -> int:
        return sum(sum(c.values()) for c in self.outcomes.values())

    def count(self, predicate: Any) -> int:
        return sum(n for c in self.outcomes.values() for o, n in c.items() if predicate(o))

    def server_errors(self) -> int:
        return self.count(lambda o: o.isdigit() and o.startswith("5"))

    def shed(self) -> int:
        """503 server_busy: the server's admission control refused the call on purpose."""
        return self.count(lambda o: o == "busy")

    def rate_limited(self) -> int:
        return self.count(lambda o: o == "429")

    def failures(self) -> int:
        """Anything but a 2xx or 304: statuses >= 400 and transport errors."""
        return self.count(lambda o: not (o.startswith("2") or o == "304"))

    def summary(self) -> dict[str, Any]:
        kinds = {}
        for kind in KINDS:
            outcomes = self.outcomes.get(kind, Counter())
            lat = self.latencies.get(kind, [])
            kinds[kind] = {
                "requests": sum(outcomes.values()),
                "outcomes": dict(outcomes),
                "p50_ms": _ms(percentile(lat, 50)),
                "p99_ms": _ms(percentile(lat, 99)),
                "max_ms": _ms(max(lat) if lat else None),
            }
        return {
            "seconds": round(self.seconds, 1),
            "requests": self.requests(),
            "requests_per_s": round(self.requests() / max(self.seconds, 1e-9), 1),
            "failures": self.failures(),
            "server_errors_5xx": self.server_errors(),
            "rate_limited_429": self.rate_limited(),
            "shed_503_busy": self.shed(),
            "client_loop_lag_p99_ms": _ms(percentile(self.loop_lag, 99)),
            "worst_seconds": self.worst_seconds(),
            "kinds": kinds,
        }


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 1)


class Recorder:
    """The current window, plus totals over the whole run."""

    def __init__(self) -> None:
        self.window = Window(time.monotonic())
        self.total: Counter[str] = Counter()

    def begin(self) -> None:
        self.window = Window(time.monotonic())

    def end(self) -> Window:
        self.window.ended = time.monotonic()
        finished = self.window
        self.window = Window(time.monotonic())
        return finished

    def record(self, kind: str, outcome: str, seconds: float | None) -> None:
        self.window.outcomes[kind][outcome] += 1
        self.total[f"{kind}:{outcome}"] += 1
        if seconds is not None:
            self.window.latencies[kind].append(seconds)
            self.window.timeline.append((time.monotonic() - self.window.started, seconds))

    def loop_lag(self, seconds: float) -> None:
        self.window.loop_lag.append(seconds)
