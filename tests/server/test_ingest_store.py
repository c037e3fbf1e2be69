"""``ingest.store`` on several targets at once: states created and brought forward in
bulk in the same call, events recorded once however often a batch is stored."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from server.db import get_database
from server.jobs import ingest
from server.jobs.events import NewEvent, record_events
from server.models import CheckState, Event
from tests.server.results_helpers import make_result


@pytest.fixture
def agents(register):
    return [register()["agent_id"] for _ in range(2)]


def states(app) -> dict[tuple[str, str], tuple[str, int]]:
    with get_database(app).session() as session:
        return {
            (s.target_id, s.check_id): (s.status, s.occurrences)
            for s in session.scalars(select(CheckState))
        }


def state_events(app) -> list[tuple[str | None, str | None, str]]:
    with get_database(app).session() as session:
        rows = session.scalars(select(Event).where(Event.kind == "check_state").order_by(Event.id))
        return [(e.check_id, e.previous, e.current) for e in rows]


def test_one_call_updates_some_states_and_creates_others(app, agents):
    first, second = agents
    ingest.store([(first, [make_result("load", "ok", seconds=1)])])
    batches = [
        (first, [make_result("load", "ok", seconds=2), make_result("load", "critical", seconds=3),
                 make_result("disk", "warning", seconds=3)]),
        (second, [make_result("load", "ok", seconds=3)]),
    ]
    assert ingest.store(batches) == (4, 4)
    assert states(app) == {
        (first, "load"): ("critical", 1),
        (first, "disk"): ("warning", 1),
        (second, "load"): ("ok", 1),
    }
    assert sorted(state_events(app), key=str) == sorted(
        [("load", None, "ok"), ("load", "ok", "critical"), ("disk", None, "warning"),
         ("load", None, "ok")], key=str,
    )
    # The same batches again: nothing stored, no state moved, no event twice.
    assert ingest.store(batches) == (4, 0)
    assert states(app)[(first, "load")] == ("critical", 1)
    assert len(state_events(app)) == 4


def test_events_with_a_stored_or_repeated_dedupe_key_are_added_once(app):
    def event(key: str | None) -> NewEvent:
        return NewEvent("check_state", "t", "c", "ok", "critical", "m", dedupe_key=key)

    with get_database(app).session() as session:
        assert len(record_events(session, [event("a"), event("a"), event(None)])) == 2
    with get_database(app).session() as session:
        added = record_events(session, [event("a"), event("b"), event(None)])
        assert [e.dedupe_key for e in added] == ["b", None]
    with get_database(app).session() as session:
        keys = sorted(str(k) for k in session.scalars(select(Event.dedupe_key)))
    assert keys == ["None", "None", "a", "b"]
