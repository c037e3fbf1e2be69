"""Result batches set aside because they could not be stored, kept for an operator.

When storing a claim fails for a reason that is not the database or Redis being away, the
drain job (``backlog``) finds the batch or batches at fault and sets each aside here, in the
``dead_letters`` table, then stores every other batch. A batch is kept byte for byte as it
was queued, under a digest of those bytes: setting the same batch aside again (a retried
claim, a replay that fails again) keeps one row. Operators list, inspect, replay and drop
them through the admin API (``/api/v1/ingest/dead-letters``), ``aami-server dead-letter``
and the metrics ``aami_ingest_dead_letters`` (set aside now) and
``aami_ingest_batches_set_aside_total`` (ever).

The table lives in the database rather than in Redis so that it survives a Redis restart,
and so that the CLI of the embedded server (whose in-process Redis it cannot reach) sees it.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from typing import Any

import redis
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from sqlalchemy import func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from server.db import Database
from server.errors import NotFound
from server.models import DeadLetter, utcnow

log = logging.getLogger(__name__)

# Batches ever set aside (each distinct batch counted once), read by /metrics.
SET_ASIDE_COUNT_KEY = "aami:metrics:batches_set_aside"
# Longest reason kept: the first line of an error, which may quote the batch.
MAX_REASON_LENGTH = 500


@dataclass(frozen=True)
class Refused:
    """A queued batch (its bytes) that could not be stored, and why."""

    item: bytes
    reason: str


def letter_id(item: bytes) -> str:
    return hashlib.sha256(item).hexdigest()[:16]


def reason_of(exc: BaseException) -> str:
    """The first line of ``exc`` (a database error's own message rather than the SQL),
    as text any database can store: the message may quote the very text that was refused."""
    cause = getattr(exc, "orig", None) or exc
    lines = str(cause).strip().splitlines() or [type(cause).__name__]
    return _escaped(f"{type(cause).__name__}: {lines[0]}"[:MAX_REASON_LENGTH])


def _escaped(text: str) -> str:
    """``text`` with what no database stores (lone surrogates, NUL) written as escapes."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8").replace("\x00", "\\x00")


def _summary(item: bytes) -> tuple[str | None, int]:
    """(agent id, number of results) of a queued batch, as far as it can be read."""
    try:
        batch = json.loads(item)
        agent_id, results = batch["agent_id"], batch["results"]
    except (ValueError, TypeError, KeyError):
        return None, 0
    shown = _escaped(agent_id)[:64] if isinstance(agent_id, str) else None
    return shown, len(results) if isinstance(results, list) else 0


def set_aside(database: Database, client: redis.Redis, refused: list[Refused]) -> int:
    """Keep each refused batch; returns how many were not kept already."""
    if not refused:
        return 0
    now = utcnow()
    rows: dict[str, dict[str, Any]] = {}
    for entry in refused:
        agent_id, results = _summary(entry.item)
        key = letter_id(entry.item)
        rows[key] = {
            "id": key,
            "agent_id": agent_id,
            "results": results,
            "error": entry.reason,
            "batch": entry.item,
            "set_aside_at": now,
        }
    dialect = postgresql if database.engine.dialect.name == "postgresql" else sqlite
    statement = (
        dialect.insert(DeadLetter)
        .values(list(rows.values()))
        .on_conflict_do_nothing()
        .returning(DeadLetter.id)
    )
    with database.session() as session:
        new = set(session.scalars(statement))
    for key, row in rows.items():
        log.error(
            "result batch set aside: it cannot be stored",
            extra={"dead_letter": key, "agent_id": row["agent_id"], "error": row["error"],
                   "already_set_aside": key not in new},
        )
    if new:  # committed: counted once however often the same batch comes back
        client.incrby(SET_ASIDE_COUNT_KEY, len(new))
    return len(new)


def describe(letter: DeadLetter, *, with_batch: bool = False) -> dict[str, Any]:
    described: dict[str, Any] = {
        "id": letter.id,
        "agent_id": letter.agent_id,
        "results": letter.results,
        "error": letter.error,
        "set_aside_at": letter.set_aside_at,
    }
    if with_batch:
        # Exactly as queued; bytes that are not UTF-8 (only a batch put on the list by
        # something other than the API) are shown escaped.
        described["batch"] = letter.batch.decode("utf-8", "backslashreplace")
    return described


def list_letters(session: Session, *, limit: int = 100, offset: int = 0) -> list[DeadLetter]:
    """Set-aside batches, oldest first."""
    return list(
        session.scalars(
            select(DeadLetter)
            .order_by(DeadLetter.set_aside_at, DeadLetter.id)
            .limit(limit)
            .offset(offset)
        )
    )


def count(session: Session) -> int:
    return int(session.scalar(select(func.count()).select_from(DeadLetter)) or 0)


def get_letter(session: Session, key: str, *, for_update: bool = False) -> DeadLetter:
    letter = session.get(DeadLetter, key, with_for_update=for_update)
    if letter is None:
        raise NotFound(
            f"no set-aside result batch {key!r} (list them: aami-server dead-letter list)",
            code="dead_letter_not_found",
        )
    return letter


def exists(session: Session, key: str) -> bool:
    return session.get(DeadLetter, key, populate_existing=True) is not None


def take(session: Session, key: str) -> DeadLetter:
    """Remove a set-aside batch for a replay, in the caller's transaction.

    The row stays locked until the caller commits: the caller queues the batch again first,
    so a drain job that refuses it again meanwhile waits for the commit and then keeps it,
    instead of finding it present and keeping nothing.
    """
    letter = get_letter(session, key, for_update=True)
    session.delete(letter)
    session.flush()
    return letter


def drop(session: Session, key: str) -> DeadLetter:
    """Delete a set-aside batch for good (committed by the caller)."""
    letter = get_letter(session, key)
    session.delete(letter)
    session.flush()
    return letter


def metric_families(
    database: Database, client: redis.Redis
) -> list[GaugeMetricFamily | CounterMetricFamily]:
    """For /metrics: batches set aside now (an alert on > 0 is worth having), and ever."""
    with database.sessions() as session:
        now = count(session)
    ever = client.get(SET_ASIDE_COUNT_KEY)
    return [
        GaugeMetricFamily(
            "aami_ingest_dead_letters",
            "Result batches set aside because they could not be stored, waiting for an "
            "operator (aami-server dead-letter list).",
            value=now,
        ),
        CounterMetricFamily(
            "aami_ingest_batches_set_aside",
            "Result batches ever set aside because they could not be stored.",
            value=int(ever or 0),
        ),
    ]
