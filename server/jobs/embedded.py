"""Periodic jobs for the embedded server, which has no Redis for ``aami-server cron``.

The same job functions as production run here on one daemon thread, each on its own
interval; a failing job is logged and tried again at its next turn.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from server.jobs.cron import periodic_jobs
from server.settings import Settings

log = logging.getLogger(__name__)


def start_embedded_periodic_jobs(settings: Settings) -> threading.Event:
    """Start the thread; setting the returned event stops it."""
    stop = threading.Event()
    jobs: list[tuple[Callable[[], Any], int]] = periodic_jobs(settings)  # type: ignore[assignment]
    thread = threading.Thread(target=_run, args=(jobs, stop), name="aami-periodic", daemon=True)
    thread.start()
    return stop


def _run(jobs: list[tuple[Callable[[], Any], int]], stop: threading.Event) -> None:
    due = {func: time.monotonic() + interval for func, interval in jobs}
    while not stop.is_set():
        now = time.monotonic()
        for func, interval in jobs:
            if due[func] <= now:
                due[func] = now + interval
                try:
                    func()
                except Exception:  # a job failure must not end the loop; next turn retries
                    log.exception("periodic job failed", extra={"job": func.__name__})
        stop.wait(max(0.5, min(due.values()) - time.monotonic()))
