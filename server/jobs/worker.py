"""The RQ worker behind ``aami-server worker``."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import time
from types import FrameType
from typing import Any

import redis
from rq import Queue, SimpleWorker
from rq.job import Job

from server.db import Database
from server.jobs import backlog, context
from server.jobs.queues import ALL_QUEUES, JobQueues
from server.logs import configure_logging
from server.redis_conn import connect
from server.settings import Settings

log = logging.getLogger(__name__)


class AamiWorker(SimpleWorker):
    """RQ's in-process worker, with a tighter claim on running jobs, maintenance that
    runs on time even when the worker is idle, and the ingest backlog's safety net.

    Without a forked child there is no heartbeat while a job runs, so the claim must
    outlast the job: job timeout plus a margin. RQ's default margin is 60 s; ours is
    15 s, so that a job whose worker was SIGKILLed is retried by another worker within
    about ``timeout + 15 s + maintenance interval`` instead of minutes later.
    """

    CLAIM_MARGIN_S = 15
    # Longest wait for RQ's clean-up once a stop was asked for. Its pub/sub teardown can
    # block on a socket for good; by then the last job has committed, so exiting is safe.
    TEARDOWN_LIMIT_S = 10.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.stopping = False  # a stop was asked for (SIGTERM, SIGINT), not a failure
        # Set while a job runs; left set if RQ's loop died under it (Redis lost).
        self.running_job_id: str | None = None

    def execute_job(self, job: Job, queue: Queue) -> None:
        self.running_job_id = job.id
        super().execute_job(job, queue)
        self.running_job_id = None

    def request_stop(self, signum: int, frame: FrameType | None) -> None:
        self.stopping = True
        super().request_stop(signum, frame)

    def teardown(self) -> None:
        if self.stopping:
            watchdog = threading.Timer(self.TEARDOWN_LIMIT_S, _exit_after_stuck_teardown)
            watchdog.daemon = True  # never cancelled: the process exits soon either way
            watchdog.start()
        super().teardown()

    @property
    def dequeue_timeout(self) -> int:
        # Maintenance runs only between dequeues, and an idle RQ worker blocks for about
        # seven minutes: the job of a dead worker would wait that long for its retry.
        # Wake up whenever maintenance is due instead (one cheap BLPOP more per interval).
        return max(1, min(self.worker_ttl - 15, int(self.maintenance_interval)))

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
    queues = JobQueues(client, inline=False)
    failures = 0
    abandoned: str | None = None  # a job that died in this process with Redis
    while True:
        began = time.monotonic()
        worker: AamiWorker | None = None
        try:
            if abandoned is not None:
                # It cannot be running anywhere: its batches need not wait for the lease.
                backlog.give_back(client, abandoned)
                abandoned = None
            # SimpleWorker runs jobs in this process: forking per job caps throughput at a
            # few hundred jobs a second, and every job here is short and idempotent.
            worker = AamiWorker(
                [queues.queue(q) for q in queue_names],
                connection=client,
                name=name,
                maintenance_interval=maintenance_interval,
            )
            log.info("worker starting", extra={"queues": queue_names, "burst": burst})
            worked = bool(worker.work(burst=burst, with_scheduler=True))
        except redis.RedisError as exc:  # starting, or RQ's clean-up after a failure
            if burst:
                raise
            log.error("worker lost Redis", extra={"error": str(exc)})
            worked = False
            if worker is not None:
                _let_go(worker)
        if burst or (worker is not None and worker.stopping):
            return worked
        if worker is not None and worker.running_job_id is not None:
            abandoned = worker.running_job_id
        # RQ's loop gives up on a Redis error met outside its dequeue (finishing a job,
        # maintenance) and returns as if all were well. A Redis restart must only delay
        # ingestion, so start a fresh worker, backing off while Redis stays away.
        failures = 0 if time.monotonic() - began > RESTART_RESET_S else failures + 1
        delay = RESTART_BACKOFF_S[min(failures, len(RESTART_BACKOFF_S) - 1)]
        log.warning("worker stopped unexpectedly; starting a new one", extra={"in_s": delay})
        if not _pause(delay):
            return worked


# Seconds before each restart of a worker that stopped unexpectedly; a worker that ran
# longer than RESTART_RESET_S before stopping starts again after the first delay.
RESTART_BACKOFF_S = (1, 2, 5, 10, 30)
RESTART_RESET_S = 60


def _exit_after_stuck_teardown() -> None:
    log.warning(
        "worker clean-up did not finish; exiting without it",
        extra={"limit_s": AamiWorker.TEARDOWN_LIMIT_S},
    )
    logging.shutdown()
    os._exit(0)


def _let_go(worker: AamiWorker) -> None:
    """Stop what a worker that died on a Redis error left running, and free its name."""
    with contextlib.suppress(Exception):
        if worker.pubsub_thread is not None:
            worker.pubsub_thread.stop()
    with contextlib.suppress(redis.RedisError):
        worker.connection.delete(worker.key)  # a stale entry would refuse the same --name


def _pause(seconds: float) -> bool:
    """Sleep, unless SIGTERM or SIGINT comes first; returns False if one did."""
    stop = threading.Event()
    handlers = {
        signum: signal.signal(signum, lambda *_: stop.set())
        for signum in (signal.SIGTERM, signal.SIGINT)
    }
    try:
        return not stop.wait(seconds)
    finally:
        for signum, handler in handlers.items():
            signal.signal(signum, handler)
