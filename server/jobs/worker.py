"""The RQ worker behind ``aami-server worker``."""

from __future__ import annotations

import logging

from rq import SimpleWorker

from server.db import Database
from server.jobs import context
from server.jobs.queues import ALL_QUEUES, JobQueues
from server.logs import configure_logging
from server.redis_conn import connect
from server.settings import Settings

log = logging.getLogger(__name__)


def run_worker(
    settings: Settings, queue_names: list[str], *, burst: bool, name: str | None
) -> bool:
    unknown = sorted(set(queue_names) - set(ALL_QUEUES))
    if unknown:
        raise ValueError(f"unknown queues {unknown}: choose from {', '.join(ALL_QUEUES)}")
    configure_logging(settings.LOG_LEVEL, settings.LOG_FORMAT)
    client = connect(settings.REDIS_URL, settings.DATA_DIR)
    context.configure(settings, Database(settings.database_url()), client)
    queues = JobQueues(client, inline=False)
    # SimpleWorker runs jobs in this process: forking per job caps throughput at a few
    # hundred jobs a second, and every job here is short and idempotent.
    worker = SimpleWorker([queues.queue(q) for q in queue_names], connection=client, name=name)
    log.info("worker starting", extra={"queues": queue_names, "burst": burst})
    return bool(worker.work(burst=burst, with_scheduler=True))
