"""The RQ worker behind ``aami-server worker``."""

from __future__ import annotations

import logging

import redis
from rq import SimpleWorker
from rq.job import Job

from server.db import Database
from server.jobs import backlog, context, sinks
from server.jobs.queues import ALL_QUEUES, JobQueues
from server.logs import configure_logging
from server.redis_conn import connect
from server.settings import Settings

log = logging.getLogger(__name__)


class AamiWorker(SimpleWorker):
    """RQ's in-process worker, with a tighter claim on running jobs.

    Without a forked child there is no heartbeat while a job runs, so the claim must
    outlast the job: job timeout plus a margin. RQ's default margin is 60 s; ours is
    15 s, so that a job whose worker was SIGKILLed is retried by another worker within
    about ``timeout + 15 s + maintenance interval`` instead of minutes later.
    """

    CLAIM_MARGIN_S = 15

    def run_maintenance_tasks(self) -> None:
        super().run_maintenance_tasks()
        # Result batches abandoned by a dead drain job go back on the pending list, and a
        # drain job is queued if batches wait without one (an enqueue lost half-way).
        try:
            backlog.maintain(JobQueues(self.connection, inline=False))
        except redis.RedisError as exc:  # Redis away: the next pass tries again
            log.warning("ingest backlog maintenance failed", extra={"error": str(exc)})

    def get_heartbeat_ttl(self, job: Job, working_time: float = 0.0) -> int:
        if job.timeout and job.timeout > 0:
            return int(max(job.timeout - working_time, 1)) + self.CLAIM_MARGIN_S
        return int(self.job_monitoring_interval) + self.CLAIM_MARGIN_S


def run_worker(
    settings: Settings,
    queue_names: list[str],
    *,
    burst: bool,
    name: str | None,
    maintenance_interval: int = 30,
) -> bool:
    unknown = sorted(set(queue_names) - set(ALL_QUEUES))
    if unknown:
        raise ValueError(f"unknown queues {unknown}: choose from {', '.join(ALL_QUEUES)}")
    configure_logging(settings.LOG_LEVEL, settings.LOG_FORMAT)
    client = connect(settings.REDIS_URL, settings.DATA_DIR)
    context.configure(settings, Database(settings.database_url()), client)
    sinks.install()
    queues = JobQueues(client, inline=False)
    # SimpleWorker runs jobs in this process: forking per job caps throughput at a few
    # hundred jobs a second, and every job here is short and idempotent.
    worker = AamiWorker(
        [queues.queue(q) for q in queue_names],
        connection=client,
        name=name,
        maintenance_interval=maintenance_interval,
    )
    log.info("worker starting", extra={"queues": queue_names, "burst": burst})
    return bool(worker.work(burst=burst, with_scheduler=True))
