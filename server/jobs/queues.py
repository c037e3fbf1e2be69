"""The RQ queues. In the embedded default jobs run inline (RQ's ``is_async=False``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import redis
from rq import Queue, Retry
from rq.job import Job

INGEST = "ingest"
EVENTS = "events"
MAINTENANCE = "maintenance"
ALL_QUEUES = (INGEST, EVENTS, MAINTENANCE)

# Jobs are idempotent, so a retry after a crash or a database blip does no harm.
# Ingest and delivery jobs take milliseconds; the timeout bounds how long a job of a
# killed worker stays claimed before another worker retries it.
JOB_TIMEOUT_S = 30
DEFAULT_RETRY = Retry(max=5, interval=[1, 5, 15, 60, 300])


class JobQueues:
    def __init__(self, client: redis.Redis, *, inline: bool) -> None:
        self.client = client
        self.inline = inline
        self._queues = {
            name: Queue(name, connection=client, is_async=not inline) for name in ALL_QUEUES
        }

    def queue(self, name: str) -> Queue:
        return self._queues[name]

    def enqueue(self, queue: str, func: Callable[..., Any], *args: Any, **kwargs: Any) -> Job:
        return self._queues[queue].enqueue(
            func,
            *args,
            retry=DEFAULT_RETRY,
            job_timeout=JOB_TIMEOUT_S,
            failure_ttl=7 * 86400,
            result_ttl=3600,
            **kwargs,
        )

    def fetch(self, job_id: str) -> Job | None:
        try:
            return Job.fetch(job_id, connection=self.client)
        except Exception:  # rq raises NoSuchJobError, or a decode error for foreign keys
            return None
