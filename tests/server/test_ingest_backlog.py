"""The Redis backlog between the results API and the database (server.jobs.backlog).

These run on the embedded app (SQLite, in-process Redis, jobs inline); the crash and
restart behaviour on real processes is in tests/integration/test_worker_crash.py and
test_redis_restart.py. Here: a claim abandoned by a dead job comes back, a retried job
stores its own claim first, and a batch the database refuses is set aside without
holding up the others.
"""

from __future__ import annotations

import json
import time

import pytest
from rq import Queue
from sqlalchemy import func, select
from sqlalchemy.exc import OperationalError

from server.db import get_database
from server.jobs import backlog, dead_letters, ingest
from server.jobs.queues import INGEST, JobQueues
from server.models import CheckResult
from tests.server.backlog_helpers import claim_as, drain_refusing
from tests.server.results_helpers import make_result, post_results, stored_result_ids


def queue_batches(redis_client, agent_id: str, count: int) -> list[str]:
    """Push ``count`` one-result batches straight onto the pending list (no drain job)."""
    ids = []
    for n in range(count):
        result = make_result("load", seconds=n)
        ids.append(result["result_id"])
        payload = {"agent_id": agent_id, "results": [result]}
        redis_client.rpush(backlog.PENDING_KEY, json.dumps(payload))
    return ids


def test_posted_batches_are_stored_and_leave_nothing_behind(app, client, agent, redis_client):
    reply = post_results(client, agent, [make_result("load", seconds=n) for n in range(3)])
    assert reply.status_code == 202
    assert len(stored_result_ids(app)) == 3
    assert backlog.size(redis_client) == (0, 0)
    assert not redis_client.exists(backlog.QUEUED_KEY)


def test_claim_of_a_dead_job_is_requeued_after_its_lease_and_stored(app, agent, redis_client):
    ids = queue_batches(redis_client, agent["agent_id"], 5)
    assert len(claim_as(redis_client, "dead-job", 3)) == 3  # ...and then it died
    assert backlog.size(redis_client) == (2, 3)

    assert backlog.requeue_abandoned(redis_client) == 0  # the lease still holds
    later = time.time() + backlog.LEASE_S + 1
    assert backlog.requeue_abandoned(redis_client, now=later) == 3
    assert backlog.size(redis_client) == (5, 0)
    # Abandoned batches go first: they are the oldest.
    head = json.loads(redis_client.lindex(backlog.PENDING_KEY, 0))
    assert head["results"][0]["result_id"] == ids[0]

    with app.app_context():
        totals = backlog.drain()
    assert totals == {"received": 5, "inserted": 5}
    assert stored_result_ids(app) == set(ids)
    assert backlog.size(redis_client) == (0, 0)


def test_claim_of_a_job_known_dead_is_given_back_without_waiting(agent, redis_client):
    queue_batches(redis_client, agent["agent_id"], 3)
    claim_as(redis_client, "died-with-redis", 2)
    claim_as(redis_client, "still-running", 1)

    assert backlog.give_back(redis_client, "died-with-redis") == 2
    assert backlog.size(redis_client) == (2, 1)  # the live claim keeps its lease
    assert backlog.give_back(redis_client, "never-claimed") == 0


def test_retried_job_stores_its_own_claim_before_anything_else(app, agent, redis_client):
    ids = queue_batches(redis_client, agent["agent_id"], 4)
    claim_as(redis_client, "retried-job", 2)

    class Job:  # what rq.get_current_job() gives the retried job: the same id
        id = "retried-job"

    with app.app_context(), pytest.MonkeyPatch.context() as patch:
        patch.setattr(backlog, "get_current_job", lambda: Job)
        patch.setattr(backlog, "CLAIM_BATCHES", 1)
        first_store = []
        real_store = ingest.store

        def spy(batches):
            first_store.append([r["result_id"] for _, results in batches for r in results])
            return real_store(batches)

        patch.setattr(ingest, "store", spy)
        backlog.drain()

    assert first_store[0] == ids[:2]  # its own claim, whole, first
    assert stored_result_ids(app) == set(ids)
    assert backlog.size(redis_client) == (0, 0)


def test_a_batch_the_database_refuses_is_set_aside_and_the_rest_stored(
    app, agent, redis_client
):
    ids = queue_batches(redis_client, agent["agent_id"], 3)
    poison = ids[1]

    totals = drain_refusing(app, {poison}, "invalid byte sequence")

    assert totals == {"received": 2, "inserted": 2}
    assert stored_result_ids(app) == {ids[0], ids[2]}
    assert backlog.size(redis_client) == (0, 0)
    with get_database(app).session() as session:
        (refused,) = dead_letters.list_letters(session)
    assert json.loads(refused.batch)["results"][0]["result_id"] == poison
    assert "invalid byte sequence" in refused.error


def test_backlog_is_reported_in_metrics(client, agent, redis_client):
    queue_batches(redis_client, agent["agent_id"], 2)
    claim_as(redis_client, "busy-job", 1)
    text = client.get("/metrics").get_data(as_text=True)
    assert 'aami_ingest_backlog_batches{state="waiting"} 1.0' in text
    assert 'aami_ingest_backlog_batches{state="storing"} 1.0' in text


def test_nul_in_plugin_output_does_not_make_a_batch_unstorable(app, agent, redis_client):
    # The API refuses NUL now; a batch an earlier server queued with one is still stored.
    result = make_result("load", output="binary\x00garbage")
    payload = {"agent_id": agent["agent_id"], "results": [result]}
    redis_client.rpush(backlog.PENDING_KEY, json.dumps(payload))
    with app.app_context():
        backlog.drain()
    with get_database(app).session() as session:
        output = session.scalar(select(CheckResult.output))
        assert session.scalar(select(func.count()).select_from(CheckResult)) == 1
    assert output == "binary\ufffdgarbage"


class _RunningAs:
    """rq.get_current_job() inside a drain job with this id."""

    def __init__(self, job_id: str) -> None:
        self.id = job_id


def ingest_jobs(redis_client) -> int:
    return Queue(INGEST, connection=redis_client).count


def test_batches_while_a_drain_job_is_queued_or_running_enqueue_no_other(
    app, agent, redis_client
):
    """One RQ job per batch cost the API 0.8 ms of CPU each in the fleet simulator: a
    drain job keeps its mark until it has found nothing waiting, and only then may the
    next batch enqueue a job of its own."""
    queues = JobQueues(redis_client, inline=False)
    agent_id = agent["agent_id"]
    first = backlog.submit(queues, agent_id, [make_result("load", seconds=0)])
    with app.app_context(), pytest.MonkeyPatch.context() as patch:
        patch.setattr(backlog, "get_current_job", lambda: _RunningAs(first))
        real_store = ingest.store

        def store_and_receive_another(batches):
            # A batch accepted while the job stores its claim: the job's to store too.
            if len(stored_result_ids(app)) == 0:
                assert backlog.submit(queues, agent_id, [make_result("load", seconds=1)]) == first
            return real_store(batches)

        patch.setattr(ingest, "store", store_and_receive_another)
        assert backlog.drain() == {"received": 2, "inserted": 2}
    assert ingest_jobs(redis_client) == 1  # only the job that ran
    assert not redis_client.exists(backlog.QUEUED_KEY)
    second = backlog.submit(queues, agent_id, [make_result("load", seconds=2)])
    assert second != first and ingest_jobs(redis_client) == 2


def test_a_drain_job_stops_only_when_nothing_waits_and_gives_up_only_its_own_mark(
    redis_client,
):
    def finish(job_id: str) -> int:
        return redis_client.eval(
            backlog._FINISH, 2, backlog.PENDING_KEY, backlog.QUEUED_KEY, job_id
        )

    redis_client.set(backlog.QUEUED_KEY, "job-a")
    redis_client.rpush(backlog.PENDING_KEY, b"{}")
    assert finish("job-a") == 0  # a batch came after its last claim: go on
    assert redis_client.get(backlog.QUEUED_KEY) == b"job-a"
    redis_client.delete(backlog.PENDING_KEY)
    assert finish("job-b") == 1  # stops, and leaves job-a's mark alone
    assert redis_client.get(backlog.QUEUED_KEY) == b"job-a"
    assert finish("job-a") == 1
    assert not redis_client.exists(backlog.QUEUED_KEY)


def test_a_drain_job_that_fails_gives_its_mark_up_for_the_next_batch(app, agent, redis_client):
    queues = JobQueues(redis_client, inline=False)
    job_id = backlog.submit(queues, agent["agent_id"], [make_result("load")])

    def database_down(_batches):
        raise OperationalError("INSERT ...", {}, Exception("connection refused"))

    with app.app_context(), pytest.MonkeyPatch.context() as patch:
        patch.setattr(backlog, "get_current_job", lambda: _RunningAs(job_id))
        patch.setattr(ingest, "store", database_down)
        with pytest.raises(OperationalError):
            backlog.drain()
    assert not redis_client.exists(backlog.QUEUED_KEY)
    assert backlog.size(redis_client) == (0, 1)  # the claim waits for its retry
    assert backlog.submit(queues, agent["agent_id"], [make_result("load")]) != job_id
