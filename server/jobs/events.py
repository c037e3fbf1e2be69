"""Recording events once. The caller announces the events it recorded to the sinks
(``server.jobs.sinks.announce``) once its transaction has committed."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from server.models import Event

log = logging.getLogger(__name__)

# Dedupe keys looked up per query: well under SQLite's oldest limit of 999 parameters.
_KEYS_PER_QUERY = 500


@dataclass(frozen=True)
class NewEvent:
    """An event a job wants recorded; ``dedupe_key`` set when the job may run twice."""

    kind: str
    target_id: str | None
    check_id: str | None
    previous: str | None
    current: str
    message: str
    dedupe_key: str | None = None


def record_events(session: Session, events: Sequence[NewEvent]) -> list[Event]:
    """Add every event whose ``dedupe_key`` is not stored yet, looking the keys up in
    bulk; returns the events added. An ingest job that ran twice adds nothing the second
    time, and the same key twice in ``events`` is added once."""
    keys = [e.dedupe_key for e in events if e.dedupe_key is not None]
    taken: set[str] = set()
    for start in range(0, len(keys), _KEYS_PER_QUERY):
        chunk = keys[start : start + _KEYS_PER_QUERY]
        taken.update(
            key
            for key in session.scalars(select(Event.dedupe_key).where(Event.dedupe_key.in_(chunk)))
            if key is not None
        )
    added = []
    for new in events:
        if new.dedupe_key is not None:
            if new.dedupe_key in taken:
                continue
            taken.add(new.dedupe_key)
        event = Event(**asdict(new))
        session.add(event)
        added.append(event)
    return added


def record_event(
    session: Session,
    *,
    kind: str,
    target_id: str | None,
    check_id: str | None,
    previous: str | None,
    current: str,
    message: str,
    dedupe_key: str | None = None,
) -> Event | None:
    """Add an event unless one with ``dedupe_key`` exists (a job that ran twice)."""
    added = record_events(
        session, [NewEvent(kind, target_id, check_id, previous, current, message, dedupe_key)]
    )
    return added[0] if added else None
