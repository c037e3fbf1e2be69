"""Event sinks: every new event is sent as a CloudEvent (JSON, structured mode) to each
configured webhook, by an RQ job per delivery that retries with backoff.

Deliveries are queued only after the transaction that recorded the event commits, so a
rolled-back change never announces an event that does not exist.
"""

from __future__ import annotations

import logging
from typing import Any

import requests
from sqlalchemy import event as sa_event
from sqlalchemy.orm import Session

from server.jobs import context
from server.jobs.queues import EVENTS, JobQueues
from server.models import Event

log = logging.getLogger(__name__)

CLOUDEVENTS_CONTENT_TYPE = "application/cloudevents+json"
EVENT_TYPES = {
    "target_status": "io.aami.target.status_changed",
    "check_state": "io.aami.check.state_changed",
    "flapping": "io.aami.check.flapping_changed",
}
DELIVERY_TIMEOUT_S = 10
_PENDING_KEY = "aami_new_events"


class DeliveryFailed(Exception):
    """A webhook did not accept an event; RQ retries the job."""


def to_cloud_event(event: Event) -> dict[str, Any]:
    subject = "/".join(part for part in (event.target_id, event.check_id) if part)
    return {
        "specversion": "1.0",
        "id": str(event.id),
        "source": "/aami/config-server",
        "type": EVENT_TYPES.get(event.kind, f"io.aami.{event.kind}"),
        "subject": subject,
        "time": event.created_at.isoformat(),
        "datacontenttype": "application/json",
        "data": {
            "target_id": event.target_id,
            "check_id": event.check_id,
            "previous": event.previous,
            "current": event.current,
            "message": event.message,
        },
    }


def deliver_event(url: str, cloud_event: dict[str, Any]) -> int:
    """POST one CloudEvent; any answer but 2xx raises so that RQ retries the job."""
    try:
        reply = requests.post(
            url,
            json=cloud_event,
            headers={"Content-Type": CLOUDEVENTS_CONTENT_TYPE},
            timeout=DELIVERY_TIMEOUT_S,
        )
    except requests.RequestException as exc:
        raise DeliveryFailed(f"{url}: {exc}") from None
    if not 200 <= reply.status_code < 300:
        raise DeliveryFailed(f"{url} answered {reply.status_code}")
    return reply.status_code


def _collect_new_events(session: Session, _flush_context: Any, _instances: Any) -> None:
    new = [obj for obj in session.new if isinstance(obj, Event)]
    if new:
        session.info.setdefault(_PENDING_KEY, []).extend(new)


def _send_after_commit(session: Session) -> None:
    pending: list[Event] = session.info.pop(_PENDING_KEY, [])
    if not pending:
        return
    settings = context.settings()
    urls = settings.event_webhook_urls()
    if not urls:
        return
    queues = JobQueues(context.redis_client(), inline=settings.embedded)
    for event in pending:
        payload = to_cloud_event(event)
        for url in urls:
            try:
                queues.enqueue(EVENTS, deliver_event, url, payload)
            except Exception:  # inline delivery failed, or Redis is away: log, never raise
                log.warning("event delivery not queued", extra={"url": url, "event": payload["id"]})


def _forget_after_rollback(session: Session, _previous_transaction: Any) -> None:
    session.info.pop(_PENDING_KEY, None)


def install() -> None:
    """Hook the sinks into every session of this process (idempotent)."""
    if not sa_event.contains(Session, "before_flush", _collect_new_events):
        sa_event.listen(Session, "before_flush", _collect_new_events)
        sa_event.listen(Session, "after_commit", _send_after_commit)
        sa_event.listen(Session, "after_soft_rollback", _forget_after_rollback)
