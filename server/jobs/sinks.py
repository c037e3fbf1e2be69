"""Event sinks: every new event is sent as a CloudEvent (JSON, structured mode) to each
configured webhook, never on the path of the request or job that recorded it.

The code that records events calls :meth:`EventSinks.announce` once its transaction has
committed, so a rolled-back change never announces an event that does not exist. With
Redis, each delivery is an RQ job that retries with backoff; the embedded server hands
them to its background delivery thread (``server.jobs.background_delivery``).

A webhook URL may carry credentials, so it is shown only redacted (logs, error messages)
and queued jobs name it by a reference that the worker resolves from its own settings.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Protocol

import redis
import requests

from server.jobs import context
from server.jobs.queues import EVENTS, JobQueues
from server.models import Event
from server.security.redaction import redact_url, url_reference
from server.settings import Settings

log = logging.getLogger(__name__)

CLOUDEVENTS_CONTENT_TYPE = "application/cloudevents+json"
EVENT_TYPES = {
    "target_status": "io.aami.target.status_changed",
    "check_state": "io.aami.check.state_changed",
    "flapping": "io.aami.check.flapping_changed",
}
DELIVERY_TIMEOUT_S = 10


class DeliveryFailed(Exception):
    """A webhook did not accept an event; the delivery is tried again later."""


@dataclass(frozen=True)
class Webhook:
    url: str

    # Cached: QueuedSinks.announce uses both for every event it queues.
    @cached_property
    def reference(self) -> str:
        return url_reference(self.url)

    @cached_property
    def shown(self) -> str:
        """The URL as logs may show it."""
        return redact_url(self.url)


def configured_webhooks(settings: Settings) -> list[Webhook]:
    return [Webhook(url) for url in settings.event_webhook_urls()]


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


def deliver_event(
    url: str, cloud_event: dict[str, Any], timeout_s: float = DELIVERY_TIMEOUT_S
) -> int:
    """POST one CloudEvent; any answer but 2xx raises :class:`DeliveryFailed`.

    Redirects are not followed: a webhook is configured by its final address, and a
    redirect could point the server at an address nobody configured (127.0.0.1, a cloud
    metadata service). Messages name the URL redacted and never quote the exception of
    ``requests``, whose text contains the full URL.
    """
    shown = redact_url(url)
    try:
        reply = requests.post(
            url,
            json=cloud_event,
            headers={"Content-Type": CLOUDEVENTS_CONTENT_TYPE},
            timeout=timeout_s,
            allow_redirects=False,
            stream=True,  # the body is never read: a huge answer costs nothing
        )
    except requests.Timeout:
        raise DeliveryFailed(f"{shown}: no answer within {timeout_s:g} s") from None
    except requests.ConnectionError:
        raise DeliveryFailed(f"{shown}: could not connect") from None
    except requests.RequestException as exc:
        raise DeliveryFailed(f"{shown}: {type(exc).__name__}") from None
    status = reply.status_code
    location = reply.headers.get("Location", "")
    reply.close()
    if 300 <= status < 400:
        raise DeliveryFailed(
            f"{shown} answered {status} redirecting to {redact_url(location) or '(nowhere)'}: "
            "redirects are not followed; configure the webhook's final URL"
        )
    if not 200 <= status < 300:
        raise DeliveryFailed(f"{shown} answered {status}")
    return status


def deliver_to_webhook(reference: str, cloud_event: dict[str, Any]) -> int | None:
    """The RQ job: deliver to the configured webhook named by ``reference``.

    The job carries the reference, not the URL: RQ keeps a job's arguments in Redis and
    shows them in job listings. A webhook removed from the configuration since the event
    was queued is skipped.
    """
    settings = context.settings()
    for webhook in configured_webhooks(settings):
        if webhook.reference == reference:
            return deliver_event(webhook.url, cloud_event, settings.EVENT_WEBHOOK_TIMEOUT)
    log.warning(
        "event not delivered: webhook no longer configured",
        extra={"webhook": reference, "event": cloud_event.get("id")},
    )
    return None


class EventSinks(Protocol):
    def announce(self, events: Sequence[Event]) -> None:
        """Hand committed ``events`` over for delivery; never blocks on a webhook."""

    def close(self, timeout_s: float) -> None:
        """Deliver what is pending for at most ``timeout_s`` (the process is stopping)."""


class NoSinks:
    """No webhook configured."""

    def announce(self, events: Sequence[Event]) -> None:
        pass

    def close(self, timeout_s: float) -> None:
        pass


class QueuedSinks:
    """One RQ job per event and webhook, retried with backoff by the workers."""

    def __init__(self, webhooks: Sequence[Webhook], queues: JobQueues) -> None:
        self._webhooks = list(webhooks)
        self._queues = queues

    def announce(self, events: Sequence[Event]) -> None:
        for event in events:
            payload = to_cloud_event(event)
            for webhook in self._webhooks:
                try:
                    self._queues.enqueue(
                        EVENTS,
                        deliver_to_webhook,
                        webhook.reference,
                        payload,
                        description=f"deliver event {payload['id']} to {webhook.shown}",
                    )
                except redis.RedisError as exc:  # the event is stored; only its push is lost
                    log.warning(
                        "event delivery not queued",
                        extra={
                            "webhook": webhook.shown,
                            "event": payload["id"],
                            "error": type(exc).__name__,
                        },
                    )

    def close(self, timeout_s: float) -> None:
        pass  # queued jobs live in Redis


def make_sinks(settings: Settings, client: redis.Redis) -> EventSinks:
    """The sinks for this process: RQ jobs with Redis, a background thread when embedded."""
    webhooks = configured_webhooks(settings)
    if not webhooks:
        return NoSinks()
    if settings.embedded:
        from server.jobs.background_delivery import BackgroundDelivery

        return BackgroundDelivery(
            webhooks,
            timeout_s=settings.EVENT_WEBHOOK_TIMEOUT,
            capacity=settings.EVENT_WEBHOOK_QUEUE_SIZE,
        )
    return QueuedSinks(webhooks, JobQueues(client, inline=False))


def announce(events: Sequence[Event]) -> None:
    """Hand ``events`` (committed) to this process's sinks (``context.event_sinks``)."""
    if events:
        context.event_sinks().announce(events)
