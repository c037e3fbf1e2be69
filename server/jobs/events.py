"""Recording events once, and handing them to the configured sinks."""

from __future__ import annotations

import logging

from sqlalchemy import select
from sqlalchemy.orm import Session

from server.models import Event

log = logging.getLogger(__name__)


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
    if dedupe_key is not None and session.scalar(
        select(Event.id).where(Event.dedupe_key == dedupe_key)
    ):
        return None
    event = Event(
        kind=kind,
        target_id=target_id,
        check_id=check_id,
        previous=previous,
        current=current,
        message=message,
        dedupe_key=dedupe_key,
    )
    session.add(event)
    return event
