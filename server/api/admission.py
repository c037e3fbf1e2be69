"""Admission control: how much work one server process takes on at once.

A server that starts every request it is sent gets slower for all of them once it is
past its capacity; clients then time out and retry while the server still works on the
requests they gave up, and the load stays above capacity after the burst that caused it
is gone. The fleet simulator drove the API into exactly that state with 2,500 agents
registering at 100/s: every call timed out for minutes. So each process works on at most
``MAX_ACTIVE_REQUESTS`` API calls at a time, of which at most
``MAX_ACTIVE_REGISTRATIONS`` registrations (the costliest call, and the one a fleet makes
all at once after a rollout). A call that cannot start within ``ADMISSION_WAIT`` seconds
is answered 503 ``server_busy`` with a jittered ``Retry-After``, which costs next to
nothing and which agents honour, so the load comes back spread out. A parked long-poll
gives its place up while it waits: it is not work.
"""

from __future__ import annotations

import contextlib
import random
import threading
import time
from collections.abc import Iterator

from flask import current_app, g

from server.errors import ServiceUnavailable

EXTENSION_KEY = "aami.admission"
ALL = "all"
REGISTRATION = "registration"
# Seconds a refused client is told to wait, spread so that refused clients do not return
# together.
RETRY_AFTER_RANGE = (5, 30)


class Admission:
    """Places for API calls in this process: one pool for every call, and smaller ones
    for named kinds (a call of such a kind takes a place in both)."""

    def __init__(self, limit: int, kinds: dict[str, int], wait: float) -> None:
        # Created with the app, so after gevent patched threading (gunicorn's gevent
        # worker patches before loading the app): waiting then parks a greenlet.
        self._places = {ALL: threading.BoundedSemaphore(limit)}
        self._places.update({kind: threading.BoundedSemaphore(n) for kind, n in kinds.items()})
        self.wait = wait

    def acquire(self, kind: str) -> bool:
        """Take a place in each pool ``kind`` needs, waiting up to ``wait`` in all."""
        deadline = time.monotonic() + self.wait
        taken: list[threading.BoundedSemaphore] = []
        for pool in self._pools_of(kind):
            if not pool.acquire(timeout=max(0.0, deadline - time.monotonic())):
                for held in taken:
                    held.release()
                return False
            taken.append(pool)
        return True

    def release(self, kind: str) -> None:
        for pool in self._pools_of(kind):
            pool.release()

    def _pools_of(self, kind: str) -> list[threading.BoundedSemaphore]:
        # Its own kind's pool first: a registration waiting for a registration place holds
        # no general place meanwhile.
        names = (ALL,) if kind == ALL else (kind, ALL)
        return [self._places[name] for name in names if name in self._places]


def _admission() -> Admission:
    admission: Admission = current_app.extensions[EXTENSION_KEY]
    return admission


def _busy() -> ServiceUnavailable:
    return ServiceUnavailable(
        "the server is at capacity: retry after the delay in Retry-After",
        code="server_busy",
        retry_after=random.randint(*RETRY_AFTER_RANGE),
    )


@contextlib.contextmanager
def admitted(kind: str = ALL) -> Iterator[None]:
    """Run the block holding a place of ``kind``; 503 ``server_busy`` if none frees up."""
    admission = _admission()
    if not admission.acquire(kind):
        raise _busy()
    g.aami_admitted = kind
    try:
        yield
    finally:
        if g.pop("aami_admitted", None) is not None:
            admission.release(kind)


@contextlib.contextmanager
def place_given_up() -> Iterator[None]:
    """Give this call's place up for the block (a long-poll parked on a change), and
    take one again after it; 503 ``server_busy`` if none frees up then."""
    kind = g.pop("aami_admitted", None)
    if kind is None:
        yield
        return
    admission = _admission()
    admission.release(kind)
    yield  # raising here leaves the call without a place, which admitted() then knows
    if not admission.acquire(kind):
        raise _busy()
    g.aami_admitted = kind
