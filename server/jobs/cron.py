"""The periodic jobs, scheduled with RQ's own ``CronScheduler`` (``aami-server cron``).

Two cron processes may run at once (redundancy); each then enqueues every job, and the
jobs are written so that running twice changes nothing the second time.
"""

from __future__ import annotations

import logging

import redis
from rq.cron import CronScheduler

from server.jobs import sweeps
from server.jobs.queues import MAINTENANCE
from server.settings import Settings

log = logging.getLogger(__name__)


def periodic_jobs(settings: Settings) -> list[tuple[object, int]]:
    """(job function, interval in seconds) pairs."""
    sweep_every = max(5, settings.HEARTBEAT_INTERVAL // 3)
    return [
        (sweeps.sweep_stale_agents, sweep_every),
        (sweeps.sweep_stale_checks, 30),
        (sweeps.prune_history, 3600),
    ]


def build_scheduler(settings: Settings, client: redis.Redis) -> CronScheduler:
    scheduler = CronScheduler(connection=client, name="")
    for func, interval in periodic_jobs(settings):
        scheduler.register(
            func,  # type: ignore[arg-type]
            MAINTENANCE,
            interval=interval,
            job_timeout=max(interval * 2, 60),
            result_ttl=600,
            failure_ttl=86400,
        )
    return scheduler
