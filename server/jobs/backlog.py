"""Accepted result batches wait in one Redis list; drain jobs store them in bulk.

With one RQ job and one database transaction per batch, the workers spent most of their
time on bookkeeping (RQ's dozen Redis round trips per job, a commit per batch) rather than
on results. Instead the API pushes each accepted batch onto :data:`PENDING_KEY` and
enqueues a drain job only when no drain job is queued or running. A running drain job
keeps its mark until it finds the pending list empty, in one atomic step with removing
the mark, so a batch pushed meanwhile is either seen by that job or enqueues a new one;
otherwise a fleet whose batches come a few milliseconds apart makes one RQ job per batch
(about 0.8 ms of the API's CPU each, and more of the worker's). A drain job takes up to
:data:`CLAIM_BATCHES` batches at a time and stores them with one bulk INSERT and one pass
over the check states (``ingest.store``); under load the batches pile up while a claim is
being stored, so claims grow with the load and the per-claim cost shrinks per result.

Nothing is lost when a worker dies mid-job. A drain job moves the batches it takes,
atomically, onto a list of its own (``claimed:<job id>``) under a lease, and deletes that
list only after the database transaction has committed. Afterwards either RQ retries the
abandoned job under the same id, which stores its own claimed list first, or any drain job
or worker maintenance pass finds the lease expired and puts the batches back on the pending
list. Storing a batch twice is harmless: rows are inserted with ON CONFLICT DO NOTHING on
``result_id`` and a check state only moves forward in time.

Keys, all under ``aami:ingest:``: ``pending`` (list of JSON batches); ``drain-queued``
(id of the drain job queued or running that will look at the pending list before it
stops; it expires unless that job renews it, so a lost enqueue or a dead job cannot
block draining for long); ``helper-queued`` (id of a helper drain job, enqueued by a job
that saw more batches waiting so that an idle worker can take the next claim, until it
starts); ``claims`` (sorted set: job id -> lease deadline);
``claimed:<job id>`` (the batches that job is storing); ``refused`` (batches an earlier
version set aside; moved into the ``dead_letters`` table by the maintenance pass).

One batch that cannot be stored (text no database takes, a timestamp past year 9999, a
batch that is not a batch at all) must not hold up the others: a claim that fails for
any reason but the database or Redis being away is split in halves until the failing
batches stand alone, and those are set aside (``dead_letters``) while the rest is stored.
A failure of availability leaves the whole claim for a retry instead: setting good
batches aside because the database restarted would turn an outage into work for people.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
import uuid
from typing import Any

import redis
from rq import get_current_job
from rq.timeouts import JobTimeoutException
from sqlalchemy import exc as sa_exc
from sqlalchemy.orm import Session

from server.jobs import context, dead_letters, ingest
from server.jobs.queues import INGEST, JOB_TIMEOUT_S, JobQueues

log = logging.getLogger(__name__)

PENDING_KEY = "aami:ingest:pending"
QUEUED_KEY = "aami:ingest:drain-queued"
HELPER_KEY = "aami:ingest:helper-queued"
CLAIMS_KEY = "aami:ingest:claims"
CLAIMED_PREFIX = "aami:ingest:claimed:"
# Batches set aside by earlier versions (a list of JSON records), adopted by maintain().
LEGACY_REFUSED_KEY = "aami:ingest:refused"

# Batches one claim takes: up to 20 x 500 results, well inside a job's timeout.
CLAIM_BATCHES = 20
# A drain job stops claiming after this long and leaves the rest to a fresh job, so that
# it always ends well before JOB_TIMEOUT_S and the other workers get their turn.
DRAIN_BUDGET_S = 10.0
# A claim outlives any job that holds it (the job is killed at JOB_TIMEOUT_S), so an
# expired lease means the batches were abandoned, never that they are being stored.
LEASE_S = JOB_TIMEOUT_S + 30
# How long a "drain job queued" mark holds unless its job renews it (at every claim):
# the longest a lost enqueue or a dead job holds draining up. A mark that expires under
# a slow queue or a slow claim only costs one extra drain job.
QUEUED_TTL_S = 10

# Take the batches of this job's own claim (a retry after a crash), or else move up to
# ARGV[1] batches from the pending list onto it; renew the lease either way, and the
# job's "drain queued" mark if it holds it.
# KEYS: pending, claimed:<job>, claims, drain-queued. ARGV: count, deadline, job id, ttl.
# Returns {batches, batches still pending}.
_CLAIM = """
if redis.call('GET', KEYS[4]) == ARGV[3] then
  redis.call('EXPIRE', KEYS[4], ARGV[4])
end
local items = redis.call('LRANGE', KEYS[2], 0, -1)
if #items == 0 then
  items = redis.call('LRANGE', KEYS[1], 0, tonumber(ARGV[1]) - 1)
  if #items > 0 then
    redis.call('LTRIM', KEYS[1], #items, -1)
    redis.call('RPUSH', KEYS[2], unpack(items))
  end
end
if #items > 0 then
  redis.call('ZADD', KEYS[3], ARGV[2], ARGV[3])
end
return {items, redis.call('LLEN', KEYS[1])}
"""

# Put the batches of an expired claim back at the head of the pending list.
# KEYS: pending, claimed:<job>, claims. ARGV: job id, now. Returns how many moved.
_REQUEUE = """
local deadline = redis.call('ZSCORE', KEYS[3], ARGV[1])
if not deadline or tonumber(deadline) > tonumber(ARGV[2]) then
  return 0
end
local items = redis.call('LRANGE', KEYS[2], 0, -1)
for i = #items, 1, -1 do
  redis.call('LPUSH', KEYS[1], items[i])
end
redis.call('DEL', KEYS[2])
redis.call('ZREM', KEYS[3], ARGV[1])
return #items
"""

# Stop draining only if nothing waits, and then give up the "drain queued" mark if it
# names this job: atomic, so a batch pushed before it is drained by this job, and one
# pushed after it finds no mark and enqueues a drain job of its own.
# KEYS: pending, drain-queued. ARGV: job id. Returns 1 to stop, 0 to go on claiming.
_FINISH = """
if redis.call('LLEN', KEYS[1]) > 0 then
  return 0
end
if redis.call('GET', KEYS[2]) == ARGV[1] then
  redis.call('DEL', KEYS[2])
end
return 1
"""

# Delete a "job queued" mark (either key) only if it names this job.
_UNMARK = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


def submit(queues: JobQueues, agent_id: str, results: list[dict[str, Any]]) -> str:
    """Queue one accepted batch; returns the id of a drain job, queued or running, that
    will look at it before it stops (another drain job may store it first).

    Returns only once Redis holds the batch, so a 202 after it is a promise kept.
    """
    client = queues.client
    payload = json.dumps({"agent_id": agent_id, "results": results}, separators=(",", ":"))
    job_id = str(uuid.uuid4())
    with client.pipeline(transaction=True) as pipe:
        pipe.rpush(PENDING_KEY, payload)
        pipe.set(QUEUED_KEY, job_id, nx=True, ex=QUEUED_TTL_S)
        pipe.get(QUEUED_KEY)
        _, marked, queued = pipe.execute()
    if marked:
        queues.enqueue(INGEST, drain, job_id=job_id)
        return job_id
    return queued.decode() if isinstance(queued, bytes) else str(queued)


def ensure_drain(queues: JobQueues) -> str | None:
    """Enqueue a drain job unless one is queued or running; returns the new job's id."""
    return _enqueue_unless_marked(queues, QUEUED_KEY)


def _ensure_helper(queues: JobQueues) -> None:
    """Enqueue a helper drain job unless one is queued and has not started yet."""
    _enqueue_unless_marked(queues, HELPER_KEY, helper=True)


def _enqueue_unless_marked(queues: JobQueues, mark: str, *, helper: bool = False) -> str | None:
    job_id = str(uuid.uuid4())
    if not queues.client.set(mark, job_id, nx=True, ex=QUEUED_TTL_S):
        return None
    if helper:
        queues.enqueue(INGEST, drain, helper=True, job_id=job_id)
    else:  # a primary job takes no argument, as jobs queued by earlier versions
        queues.enqueue(INGEST, drain, job_id=job_id)
    return job_id


def requeue_abandoned(client: redis.Redis, now: float | None = None) -> int:
    """Put batches of expired claims back on the pending list; returns how many."""
    now = time.time() if now is None else now
    moved = 0
    for owner in client.zrangebyscore(CLAIMS_KEY, "-inf", now):
        job_id = owner.decode() if isinstance(owner, bytes) else str(owner)
        moved += int(
            client.eval(
                _REQUEUE, 3, PENDING_KEY, CLAIMED_PREFIX + job_id, CLAIMS_KEY, job_id, now
            )
        )
    if moved:
        log.warning("requeued abandoned result batches", extra={"batches": moved})
    return moved


def give_back(client: redis.Redis, job_id: str) -> int:
    """Put the batches claimed by ``job_id`` back at once, without waiting for its lease:
    for a job known to be dead (it ran in this process and died with Redis)."""
    client.zadd(CLAIMS_KEY, {job_id: 0}, xx=True)
    return requeue_abandoned(client)


def size(client: redis.Redis) -> tuple[int, int]:
    """(batches waiting, batches being stored) - accepted and not yet stored."""
    with client.pipeline(transaction=False) as pipe:
        pipe.llen(PENDING_KEY)
        pipe.zrange(CLAIMS_KEY, 0, -1)
        waiting, owners = pipe.execute()
    if not owners:
        return int(waiting), 0
    with client.pipeline(transaction=False) as pipe:
        for owner in owners:
            pipe.llen(CLAIMED_PREFIX + (owner.decode() if isinstance(owner, bytes) else owner))
        claimed = sum(pipe.execute())
    return int(waiting), int(claimed)


def maintain(queues: JobQueues) -> None:
    """Safety net run by every worker's maintenance pass: recover abandoned claims and
    make sure a drain job exists while batches wait (for example after a lost enqueue)."""
    requeue_abandoned(queues.client)
    adopt_legacy_refused(queues.client)
    if queues.client.llen(PENDING_KEY):
        ensure_drain(queues)


def drain(helper: bool = False) -> dict[str, int]:
    """The drain job: store queued batches, a claim at a time, for up to DRAIN_BUDGET_S.

    The job holding the "drain queued" mark stops only when :data:`_FINISH` finds nothing
    waiting; a ``helper`` stops at the first empty claim.
    """
    client = context.redis_client()
    current = get_current_job()
    job_id = current.id if current is not None else str(uuid.uuid4())
    if helper:  # from here on more waiting batches may call for another helper
        client.eval(_UNMARK, 1, HELPER_KEY, job_id)
    requeue_abandoned(client)
    queues = JobQueues(client, inline=context.settings().embedded)
    try:
        return _drain_claims(client, queues, job_id, helper=helper)
    except BaseException:
        # The next batch enqueues a fresh job at once, not after this mark expires.
        with contextlib.suppress(redis.RedisError):
            client.eval(_UNMARK, 1, QUEUED_KEY, job_id)
        raise


def _drain_claims(
    client: redis.Redis, queues: JobQueues, job_id: str, *, helper: bool
) -> dict[str, int]:
    claimed_key = CLAIMED_PREFIX + job_id
    started = time.monotonic()
    totals = {"received": 0, "inserted": 0}
    while True:
        items, still_pending = client.eval(
            _CLAIM, 4, PENDING_KEY, claimed_key, CLAIMS_KEY, QUEUED_KEY,
            CLAIM_BATCHES, time.time() + LEASE_S, job_id, QUEUED_TTL_S,
        )
        if not items:
            if helper or client.eval(_FINISH, 2, PENDING_KEY, QUEUED_KEY, job_id):
                break
            continue  # a batch came after the claim: this job is still the one to drain it
        if still_pending and not queues.inline:
            _ensure_helper(queues)  # let an idle worker take the next claim meanwhile
        received, inserted, refused = store_isolating(items)
        if refused:  # kept before the claim goes: a crash in between only repeats this
            dead_letters.set_aside(context.database(), client, refused)
        totals["received"] += received
        totals["inserted"] += inserted
        with client.pipeline(transaction=True) as pipe:
            pipe.delete(claimed_key)
            pipe.zrem(CLAIMS_KEY, job_id)
            pipe.execute()
        # Embedded, jobs run inline in a request: no other worker would take the rest.
        if time.monotonic() - started > DRAIN_BUDGET_S and not queues.inline:
            client.eval(_UNMARK, 1, QUEUED_KEY, job_id)
            if client.llen(PENDING_KEY):
                ensure_drain(queues)
            break
    return totals


def store_isolating(items: list[bytes]) -> tuple[int, int, list[dead_letters.Refused]]:
    """Store claimed batches; returns (results received, rows inserted, batches refused).

    Together first; when that fails for any reason but availability, in halves, down to
    the single batches at fault, so that one bad batch costs a few extra transactions and
    never the others' results. A failure of availability is raised: the claim stays.
    """
    refused: list[dead_letters.Refused] = []
    decoded: list[tuple[bytes, ingest.Batch]] = []
    for item in items:
        try:
            decoded.append((item, _decode(item)))
        except (ValueError, TypeError, KeyError) as exc:
            refused.append(dead_letters.Refused(item, f"not a result batch: {exc!r}"[:500]))
    received, inserted = _store_or_split(decoded, refused)
    return received, inserted, refused


def _store_or_split(
    batches: list[tuple[bytes, ingest.Batch]], refused: list[dead_letters.Refused]
) -> tuple[int, int]:
    if not batches:
        return 0, 0
    try:
        return ingest.store([batch for _, batch in batches])
    except Exception as exc:
        if is_unavailability(exc):
            raise
        if len(batches) == 1:
            refused.append(dead_letters.Refused(batches[0][0], dead_letters.reason_of(exc)))
            return 0, 0
        log.warning(
            "storing a claim failed; looking for the batch at fault",
            extra={"batches": len(batches), "error": dead_letters.reason_of(exc)},
        )
    middle = len(batches) // 2
    first = _store_or_split(batches[:middle], refused)
    second = _store_or_split(batches[middle:], refused)
    return first[0] + second[0], first[1] + second[1]


# SQLSTATE classes of PostgreSQL errors that are the deployment's, not a batch's:
# 08 connection, 53 insufficient resources, 57 operator intervention (shutdown, cancel),
# 58 system error, 42 a statement the schema or rights refuse (a migration not applied).
_UNAVAILABLE_SQLSTATE_CLASSES = ("08", "42", "53", "57", "58")


def is_unavailability(exc: BaseException) -> bool:
    """True when ``exc`` says the database, Redis or the job's time ran out, rather than
    that the data cannot be stored: then no batch is at fault and all must be retried."""
    if isinstance(exc, redis.RedisError | JobTimeoutException | MemoryError | OSError):
        return True
    if isinstance(exc, sa_exc.DisconnectionError | sa_exc.TimeoutError):
        return True
    if isinstance(exc, sa_exc.DBAPIError):
        if exc.connection_invalidated:
            return True
        sqlstate = getattr(exc.orig, "sqlstate", None)
        if sqlstate:
            return str(sqlstate)[:2] in _UNAVAILABLE_SQLSTATE_CLASSES
        # SQLite and drivers without SQLSTATEs: "database is locked", "disk I/O error"...
        return isinstance(exc, sa_exc.OperationalError | sa_exc.InterfaceError)
    return False


def adopt_legacy_refused(client: redis.Redis) -> int:
    """Move batches an earlier version set aside in Redis into the dead-letter table."""
    moved = 0
    while True:
        raw = client.lindex(LEGACY_REFUSED_KEY, 0)
        if raw is None:
            return moved
        try:
            record = json.loads(raw)
            entry = dead_letters.Refused(record["batch"].encode(), str(record["error"]))
        except (ValueError, TypeError, KeyError, AttributeError):
            item = raw if isinstance(raw, bytes) else raw.encode()
            entry = dead_letters.Refused(item, "set aside by an earlier version")
        dead_letters.set_aside(context.database(), client, [entry])
        client.lpop(LEGACY_REFUSED_KEY)  # only once it is kept: at worst it is kept twice
        moved += 1


def replay(session: Session, queues: JobQueues, key: str) -> tuple[dict[str, Any], str]:
    """Queue a set-aside batch again; returns its description and what became of it:
    ``stored`` or ``set_aside`` (drained at once, embedded) or ``queued`` (a worker will).

    The batch is on the pending list before its row is gone (one transaction holds the
    row), so a crash in between leaves it in both places, never in neither; a batch that
    still cannot be stored is set aside again by the drain job.
    """
    letter = dead_letters.take(session, key)
    described = dead_letters.describe(letter)
    queues.client.rpush(PENDING_KEY, letter.batch)
    session.commit()
    if not queues.inline:
        ensure_drain(queues)
        return described, "queued"
    # Embedded: drain here and now, whatever "drain queued" mark is left, to say the outcome.
    drain()
    return described, "set_aside" if dead_letters.exists(session, key) else "stored"


def _decode(item: bytes) -> tuple[str, list[dict[str, Any]]]:
    batch = json.loads(item)
    agent_id, results = batch["agent_id"], batch["results"]
    if not isinstance(agent_id, str) or not isinstance(results, list):
        raise TypeError("agent_id must be a string and results a list")
    return agent_id, results
