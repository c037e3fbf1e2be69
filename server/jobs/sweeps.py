"""Periodic sweeps: agents that stopped heartbeating, checks that stopped reporting.

Both may run in two processes at once (two cron schedulers, a retried job). Every state
change is a conditional UPDATE, and only the process whose UPDATE changed the row writes
the event, so a transition is recorded exactly once.
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime, timedelta

from sqlalchemy import select, update

from server.jobs import context, sinks
from server.jobs.events import record_event
from server.models import Check, CheckState, Target, utcnow
from server.services import liveness
from server.services.targets import transition_status

log = logging.getLogger(__name__)


def sweep_stale_agents() -> dict[str, int]:
    """online -> stale after STALE_AFTER_INTERVALS missed heartbeats, -> offline after
    OFFLINE_AFTER_INTERVALS; one event per transition."""
    settings = context.settings()
    client = context.redis_client()
    now = time.time()
    stale_after = settings.HEARTBEAT_INTERVAL * settings.STALE_AFTER_INTERVALS
    offline_after = settings.HEARTBEAT_INTERVAL * settings.OFFLINE_AFTER_INTERVALS
    moved = {"stale": 0, "offline": 0}
    with context.database().session() as session:
        watched = list(
            session.scalars(select(Target).where(Target.status.in_(("online", "stale"))))
        )
        seen = liveness.last_seen(client, [t.id for t in watched])
        for target in watched:
            last = seen.get(target.id)
            if last is None:  # Redis lost it (restart without persistence): use the database
                last = target.last_seen.timestamp() if target.last_seen else 0.0
            silent_for = now - last
            if silent_for >= offline_after:
                new_status = "offline"
            elif silent_for >= stale_after:
                new_status = "stale"
            else:
                continue
            if new_status == target.status:
                continue
            when = datetime.fromtimestamp(last, UTC) if last else None
            event = transition_status(
                session,
                target.id,
                new_status,
                when=when,
                message=f"{target.hostname}: no heartbeat for {int(silent_for)} s",
            )
            if event is not None:
                session.commit()
                sinks.announce([event])
                moved[new_status] += 1
            # The next heartbeat must notice the agent was away and bring it back online.
            liveness.remember_status(client, target.id, new_status)
    if any(moved.values()):
        log.info("stale agent sweep", extra=moved)
    return moved


def sweep_stale_checks() -> int:
    """A check silent for twice its interval plus its timeout becomes unknown, like a
    TTL check, unless its target is already known to be away or in maintenance."""
    now = utcnow()
    changed = 0
    with context.database().session() as session:
        rows = session.execute(
            select(CheckState, Check.interval_s, Check.timeout_s, Target.status, Target.maintenance)
            .join(Check, Check.id == CheckState.check_id)
            .join(Target, Target.id == CheckState.target_id)
            .where(CheckState.status != "unknown")
        ).all()
        for state, interval, timeout, target_status, maintenance in rows:
            allowed = timedelta(seconds=2 * interval + timeout)
            if now - state.executed_at <= allowed:
                continue
            silent = int((now - state.executed_at).total_seconds())
            output = (
                f"no result for {silent} s (expected every {interval:g} s): "
                f"the check or its agent stopped reporting"
            )
            moved = session.execute(
                update(CheckState)
                .where(
                    CheckState.target_id == state.target_id,
                    CheckState.check_id == state.check_id,
                    CheckState.status == state.status,
                    CheckState.executed_at == state.executed_at,
                )
                .values(status="unknown", exit_code=3, output=output, since=now, occurrences=1)
                .execution_options(synchronize_session=False)
            )
            if moved.rowcount != 1:  # type: ignore[attr-defined]
                continue
            changed += 1
            event = None
            if target_status == "online" and not maintenance:
                event = record_event(
                    session,
                    kind="check_state",
                    target_id=state.target_id,
                    check_id=state.check_id,
                    previous=state.status,
                    current="unknown",
                    message=output,
                    dedupe_key=f"stale-check:{state.target_id}:{state.check_id}:"
                    f"{state.executed_at.isoformat()}",
                )
            session.commit()
            if event is not None:
                sinks.announce([event])
    return changed


def prune_history() -> dict[str, int]:
    """Delete results and events older than the retention period, in small chunks so
    the database never holds a long lock."""
    from server.jobs.retention import prune

    return prune(context.settings().RESULT_RETENTION_DAYS)
