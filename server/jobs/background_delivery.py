"""Webhook deliveries of the embedded server, on background threads instead of RQ.

The embedded server has no worker process: a delivery made inline would hold the request
that recorded the event for as long as the webhook takes (10 s for one that hangs). Each
webhook gets a *lane*: a bounded queue and one thread that delivers in order and retries
a failed delivery on the same schedule as the RQ jobs. A hanging webhook therefore slows
only its own lane. When the process stops, :meth:`BackgroundDelivery.close` tries every
pending delivery once more within a deadline and logs what it had to drop.
"""

from __future__ import annotations

import atexit
import heapq
import itertools
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from server.jobs.queues import DEFAULT_RETRY
from server.jobs.sinks import DeliveryFailed, Webhook, deliver_event, to_cloud_event
from server.models import Event

log = logging.getLogger(__name__)

# Seconds between a failed delivery and its next try (the RQ jobs' schedule).
RETRY_INTERVALS_S: tuple[float, ...] = tuple(DEFAULT_RETRY.intervals)
DRAIN_TIMEOUT_S = 10.0

Send = Callable[[str, dict[str, Any], float], object]


@dataclass(order=True)
class _Delivery:
    due: float
    seq: int
    payload: dict[str, Any] = field(compare=False)
    failures: int = field(default=0, compare=False)


class _Lane:
    """One webhook's pending deliveries and the thread that sends them."""

    def __init__(
        self,
        webhook: Webhook,
        *,
        send: Send,
        timeout_s: float,
        capacity: int,
        retry_intervals: Sequence[float],
    ) -> None:
        self.webhook = webhook
        self._send = send
        self._timeout_s = timeout_s
        self._capacity = capacity
        self._retry_intervals = tuple(retry_intervals)
        self._pending: list[_Delivery] = []
        self._seq = itertools.count()
        self._condition = threading.Condition()
        self._closing = False
        self._full = False
        self._drain_deadline = 0.0
        self._thread: threading.Thread | None = None

    def put(self, payload: dict[str, Any]) -> None:
        with self._condition:
            if self._closing:
                log.warning(
                    "event not delivered: the server is stopping",
                    extra={"webhook": self.webhook.shown, "event": payload.get("id")},
                )
                return
            if len(self._pending) >= self._capacity:
                if not self._full:  # once per overflow, not once per event
                    log.error(
                        "webhook delivery queue full: dropping new events until it drains",
                        extra={"webhook": self.webhook.shown, "capacity": self._capacity},
                    )
                self._full = True
                return
            self._full = False
            heapq.heappush(self._pending, _Delivery(time.monotonic(), next(self._seq), payload))
            self._start()
            self._condition.notify()

    def pending(self) -> int:
        with self._condition:
            return len(self._pending)

    def _start(self) -> None:
        # Started on first use, so a server process forked after create_app() (gunicorn)
        # starts its own thread instead of inheriting a dead one.
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(
                target=self._run, name=f"aami-webhook-{self.webhook.reference}", daemon=True
            )
            self._thread.start()

    def begin_closing(self, deadline: float) -> None:
        """Take no more events; deliver what is pending until ``deadline``, then stop."""
        with self._condition:
            self._closing = True
            self._drain_deadline = deadline
            self._condition.notify()

    def join(self, deadline: float) -> None:
        thread = self._thread
        if thread is not None:
            # A delivery under way may still take its own timeout past the deadline.
            thread.join(max(0.0, deadline - time.monotonic()) + self._timeout_s)

    def _next(self) -> _Delivery | None:
        """The next delivery due (waiting for it), or None once closed and drained."""
        with self._condition:
            while True:
                if self._closing:
                    if self._pending and time.monotonic() < self._drain_deadline:
                        return heapq.heappop(self._pending)
                    return None
                if self._pending:
                    wait = self._pending[0].due - time.monotonic()
                    if wait <= 0:
                        return heapq.heappop(self._pending)
                    self._condition.wait(wait)
                else:
                    self._condition.wait()

    def _run(self) -> None:
        while (delivery := self._next()) is not None:
            self._deliver(delivery)
        with self._condition:
            dropped = len(self._pending)
            self._pending.clear()
        if dropped:
            log.error(
                "events not delivered: the server stopped before the webhook took them",
                extra={"webhook": self.webhook.shown, "dropped": dropped},
            )

    def _deliver(self, delivery: _Delivery) -> None:
        try:
            self._send(self.webhook.url, delivery.payload, self._timeout_s)
        except DeliveryFailed as exc:
            self._failed(delivery, str(exc))
        except Exception as exc:  # a bug must not end the lane; the message has no URL
            self._failed(delivery, type(exc).__name__)

    def _failed(self, delivery: _Delivery, reason: str) -> None:
        delivery.failures += 1
        event_id = delivery.payload.get("id")
        with self._condition:
            retry = delivery.failures <= len(self._retry_intervals) and not self._closing
            if retry:
                delay = self._retry_intervals[delivery.failures - 1]
                delivery.due = time.monotonic() + delay
                heapq.heappush(self._pending, delivery)
        if retry:
            log.warning(
                "webhook delivery failed, will retry",
                extra={"webhook": self.webhook.shown, "event": event_id, "error": reason,
                       "attempt": delivery.failures, "retry_in": delay},
            )
        else:
            log.error(
                "webhook delivery failed, giving up",
                extra={"webhook": self.webhook.shown, "event": event_id, "error": reason,
                       "attempts": delivery.failures},
            )


class BackgroundDelivery:
    """The embedded server's event sinks: one :class:`_Lane` per webhook."""

    def __init__(
        self,
        webhooks: Sequence[Webhook],
        *,
        timeout_s: float,
        capacity: int,
        retry_intervals: Sequence[float] = RETRY_INTERVALS_S,
        send: Send = deliver_event,
    ) -> None:
        self._lanes = [
            _Lane(
                webhook,
                send=send,
                timeout_s=timeout_s,
                capacity=capacity,
                retry_intervals=retry_intervals,
            )
            for webhook in webhooks
        ]
        self._closed = False
        atexit.register(self.close)

    def announce(self, events: Sequence[Event]) -> None:
        for event in events:
            payload = to_cloud_event(event)
            for lane in self._lanes:
                lane.put(payload)

    def pending(self) -> int:
        """Deliveries waiting, over every webhook."""
        return sum(lane.pending() for lane in self._lanes)

    def close(self, timeout_s: float = DRAIN_TIMEOUT_S) -> None:
        if self._closed:
            return
        self._closed = True
        atexit.unregister(self.close)
        deadline = time.monotonic() + timeout_s
        for lane in self._lanes:
            lane.begin_closing(deadline)
        for lane in self._lanes:
            lane.join(deadline)
