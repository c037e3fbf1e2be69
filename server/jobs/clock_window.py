"""The span of ``executed_at`` the server trusts, around its own clock.

An agent stamps its results with its own clock. One that runs ahead dates its results in
the future, and a state is only ever replaced by a newer result: one result dated 2999
would hide every real one after it. So a result dated more than ``ahead`` past the
server's clock is kept (an agent with a wrong clock still reports real problems, and the
agent drops a batch the server refuses) but placed at the time the server received it,
with the agent's own time beside it in ``agent_executed_at``. A result older than
``behind`` (the retention period) is refused on its own, in the reply's ``rejected``
list: retention would delete it at once, and stored it could pass for the current state.

The API places results with its receive time; the ingest worker places again with its own
clock whatever an earlier server queued unplaced, so both sides hold the same rule.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from server.settings import Settings

# Results of one batch placed at the same receive time keep their agent's order, one
# microsecond apart (the precision of every database here), so none hides another.
_TICK = timedelta(microseconds=1)
# The API replica that placed a result and the worker that folds it read different clocks.
_CLOCK_SLACK = timedelta(minutes=1)


@dataclass(frozen=True)
class ClockWindow:
    ahead: timedelta
    behind: timedelta

    @classmethod
    def of(cls, settings: Settings) -> ClockWindow:
        return cls(
            ahead=timedelta(seconds=settings.RESULT_MAX_FUTURE_SKEW),
            behind=timedelta(days=settings.RESULT_RETENTION_DAYS),
        )

    def latest_trusted(self, now: datetime) -> datetime:
        """The latest ``executed_at`` believed at ``now``."""
        return now + self.ahead

    def latest_trusted_state(self, now: datetime) -> datetime:
        """A state dated later than this at ``now`` was stored before the window held (or
        by a server that did not keep it), and its time orders nothing."""
        return self.latest_trusted(now) + _CLOCK_SLACK

    def too_old(self, executed_at: datetime, now: datetime) -> bool:
        return executed_at < now - self.behind

    def place(self, results: list[dict[str, Any]], received_at: datetime) -> None:
        """Move results dated past the window to ``received_at`` (in their batch's order),
        keeping the agent's time in ``agent_executed_at``; in place. ``executed_at`` values
        are aware datetimes. Results placed already are left alone."""
        latest = self.latest_trusted(received_at)
        ahead = [
            r for r in results
            if r.get("agent_executed_at") is None and r["executed_at"] > latest
        ]
        ahead.sort(key=lambda r: r["executed_at"])
        for position, result in enumerate(ahead):
            result["agent_executed_at"] = result["executed_at"]
            result["executed_at"] = received_at - (len(ahead) - 1 - position) * _TICK
