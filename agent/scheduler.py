"""Runs the assigned checks on their intervals.

One timer thread keeps a heap of due times and hands due checks to a fixed pool of
``max_concurrent`` worker threads through a queue, so the pool size is the concurrency
limit and no thread is created per execution.

Scheduling rules (DESIGN.md, "Check semantics"):

* The first run of a check comes after a splay: a fraction of ``min(interval, 60s)`` derived
  from a hash of the splay seed (the agent id) and the check id. The same agent restarting
  keeps its phase; different agents spread out, so a fleet restart does not fire every
  check at the same moment.
* Next due = last due + interval, so checks do not drift by their own run time. If the
  scheduler fell behind by more than an interval, the missed runs are skipped, not burst.
* A check never overlaps itself: a run that comes due while the previous one is still
  running (or still waiting for a worker) is skipped and counted.
"""

from __future__ import annotations

import hashlib
import heapq
import itertools
import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from agent.executor import error_result, iso_utc
from agent.model import CheckResult, CheckSpec

log = logging.getLogger(__name__)

#: Upper bound of the first-run splay, whatever the interval: a check running hourly should
#: not wait up to an hour for its first result after an agent restart.
MAX_SPLAY_SECONDS = 60.0
#: Guard against a zero or negative interval turning the timer into a busy loop; config
#: validation should have refused it already.
MIN_INTERVAL_SECONDS = 0.01


class CheckRunner(Protocol):
    """What the scheduler needs from an executor."""

    def run(self, spec: CheckSpec) -> CheckResult: ...


def splay_offset(splay_seed: str, check_id: str, interval: float) -> float:
    """Deterministic first-run offset in ``[0, min(interval, MAX_SPLAY_SECONDS))``.

    hashlib rather than hash(): Python salts str hashes per process, which would give the
    same agent a new phase at every restart.
    """
    window = min(max(interval, 0.0), MAX_SPLAY_SECONDS)
    digest = hashlib.sha256(f"{splay_seed}\0{check_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 * window


def _schedule_key(spec: CheckSpec) -> tuple[Any, ...]:
    """The fields whose change means "a different check": a new one reschedules it."""
    return (
        tuple(spec.command),
        spec.interval,
        spec.timeout,
        spec.limits,
        tuple(sorted(spec.env.items())),
    )


@dataclass(eq=False)
class _Entry:
    spec: CheckSpec
    splay: float
    generation: int = 0  # bumped on change/removal; heap items of older generations are stale
    next_due: float | None = None
    queued: bool = False  # handed to the workers, not started yet
    running: bool = False
    removed: bool = False
    runs: int = 0
    skipped: int = 0
    last_status: str | None = None
    last_exit_code: int | None = None
    last_executed_at: str | None = None
    last_duration_ms: int | None = None


class Scheduler:
    """Schedules CheckSpecs on an executor; results go to ``on_result`` (from a worker
    thread, so it must be thread-safe)."""

    def __init__(
        self,
        executor: CheckRunner,
        on_result: Callable[[CheckResult], None],
        max_concurrent: int,
        splay_seed: str,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_concurrent < 1:
            raise ValueError(f"max_concurrent must be at least 1, got {max_concurrent}")
        self._executor = executor
        self._on_result = on_result
        self._max_concurrent = max_concurrent
        self._splay_seed = splay_seed
        self._clock = clock

        self._lock = threading.Lock()
        # Wakes the timer (new schedule, stop) and stop() (a run finished).
        self._changed = threading.Condition(self._lock)
        self._entries: dict[str, _Entry] = {}
        self._heap: list[tuple[float, int, str, int]] = []  # (due, tiebreak, id, generation)
        self._tiebreak = itertools.count()
        self._ready: queue.SimpleQueue[_Entry | None] = queue.SimpleQueue()
        self._in_flight = 0  # executions plus their on_result calls
        self._started = False
        self._stopping = False
        self._threads: list[threading.Thread] = []

    # -- public API ------------------------------------------------------------------

    def update(self, specs: Sequence[CheckSpec]) -> None:
        """Apply a new assignment: start new checks, drop removed ones, reschedule changed
        ones; unchanged checks keep their schedule."""
        wanted: dict[str, CheckSpec] = {}
        for spec in specs:
            if spec.id in wanted:
                log.warning("check id %r assigned twice; using the last definition", spec.id)
            wanted[spec.id] = spec

        with self._lock:
            for check_id, entry in list(self._entries.items()):
                if check_id not in wanted and not entry.removed:
                    entry.removed = True
                    entry.generation += 1
                    entry.next_due = None
                    self._forget_if_idle(entry)
                    log.info("check %s removed", check_id)
            for spec in wanted.values():
                self._apply(spec)
            self._changed.notify_all()

    def run_now(self, check_id: str) -> bool:
        """Run a check as soon as a worker is free, outside its schedule.

        False if the check is unknown, already running, or the scheduler is stopping.
        """
        with self._lock:
            entry = self._entries.get(check_id)
            if entry is None or entry.removed or entry.running or self._stopping:
                return False
            if not entry.queued:
                entry.queued = True
                self._ready.put(entry)
            return True

    def start(self) -> None:
        """Start the timer and worker threads; checks given so far get their first due time."""
        with self._lock:
            if self._stopping:
                raise RuntimeError("a stopped scheduler cannot be started again")
            if self._started:
                return
            self._started = True
            now = self._clock()
            for entry in self._entries.values():
                if not entry.removed:
                    self._schedule(entry, now + entry.splay)
            # Daemon threads: a plugin stuck in uninterruptible sleep must not keep the
            # agent from exiting after stop() gave up on it.
            self._threads = [
                threading.Thread(target=self._timer_loop, name="aami-scheduler", daemon=True)
            ] + [
                threading.Thread(target=self._worker_loop, name=f"aami-check-{n}", daemon=True)
                for n in range(self._max_concurrent)
            ]
        for thread in self._threads:
            thread.start()

    def stop(self, grace: float) -> None:
        """Stop scheduling, let running checks finish for up to ``grace`` seconds, return.

        Checks waiting for a worker are not started. Checks still running after ``grace``
        are left to finish on their own (their timeout bounds them); their results still
        reach on_result.
        """
        deadline = time.monotonic() + max(grace, 0.0)
        with self._lock:
            self._stopping = True
            self._changed.notify_all()
            workers = self._max_concurrent
        for _ in range(workers):
            self._ready.put(None)
        with self._lock:
            while self._in_flight:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    log.warning(
                        "%d check(s) still running after %.1fs; not waiting for them",
                        self._in_flight,
                        grace,
                    )
                    break
                self._changed.wait(remaining)
        for thread in self._threads:
            thread.join(timeout=max(0.0, deadline - time.monotonic()))

    def snapshot(self) -> list[dict[str, Any]]:
        """Per-check state for a status page, sorted by check id.

        ``next_due`` is the wall-clock time of the next scheduled run (ISO 8601 UTC) and
        ``next_due_in`` the seconds until then (both None before start()); ``last_*`` are
        None until the first run completes; ``skipped`` counts runs skipped to avoid overlap.
        """
        with self._lock:
            now = self._clock()
            wall_now = time.time()
            return [
                {
                    "check_id": check_id,
                    "name": entry.spec.name,
                    "interval": entry.spec.interval,
                    "timeout": entry.spec.timeout,
                    "next_due": (
                        None
                        if entry.next_due is None
                        else iso_utc(wall_now + max(0.0, entry.next_due - now))
                    ),
                    "next_due_in": (
                        None if entry.next_due is None else max(0.0, entry.next_due - now)
                    ),
                    "running": entry.running,
                    "queued": entry.queued,
                    "runs": entry.runs,
                    "skipped": entry.skipped,
                    "last_status": entry.last_status,
                    "last_exit_code": entry.last_exit_code,
                    "last_executed_at": entry.last_executed_at,
                    "last_duration_ms": entry.last_duration_ms,
                }
                for check_id, entry in sorted(self._entries.items())
                if not entry.removed
            ]

    def set_max_concurrent(self, max_concurrent: int) -> None:
        """Resize the worker pool (configuration reload). Shrinking takes effect as
        workers finish what they are running."""
        if max_concurrent < 1:
            raise ValueError(f"max_concurrent must be at least 1, got {max_concurrent}")
        with self._lock:
            if self._stopping:
                return
            change = max_concurrent - self._max_concurrent
            self._max_concurrent = max_concurrent
            if not self._started:
                return
            new_threads = [
                threading.Thread(target=self._worker_loop, name="aami-check", daemon=True)
                for _ in range(max(change, 0))
            ]
            self._threads += new_threads
            for _ in range(max(-change, 0)):
                self._ready.put(None)  # the next idle worker to take it exits
        for thread in new_threads:
            thread.start()
        log.info("check concurrency set to %d", max_concurrent)

    def running_count(self) -> int:
        """How many checks are executing right now (for the heartbeat)."""
        with self._lock:
            return sum(1 for entry in self._entries.values() if entry.running)

    # -- internals (callers hold self._lock unless noted) -----------------------------

    def _apply(self, spec: CheckSpec) -> None:
        entry = self._entries.get(spec.id)
        if entry is not None and not entry.removed:
            changed = _schedule_key(entry.spec) != _schedule_key(spec)
            entry.spec = spec
            if not changed:
                return
            log.info("check %s changed; rescheduling", spec.id)
            entry.generation += 1
        elif entry is not None:
            # Removed but still running: revive the same entry so the no-overlap rule
            # still sees that run.
            entry.spec, entry.removed = spec, False
            entry.generation += 1
        else:
            entry = _Entry(spec=spec, splay=0.0)
            self._entries[spec.id] = entry
            log.info("check %s added", spec.id)
        entry.splay = splay_offset(self._splay_seed, spec.id, spec.interval)
        entry.next_due = None
        if self._started:
            self._schedule(entry, self._clock() + entry.splay)

    def _schedule(self, entry: _Entry, due: float) -> None:
        entry.next_due = due
        heapq.heappush(self._heap, (due, next(self._tiebreak), entry.spec.id, entry.generation))

    def _forget_if_idle(self, entry: _Entry) -> None:
        if entry.removed and not entry.running and not entry.queued:
            if self._entries.get(entry.spec.id) is entry:
                del self._entries[entry.spec.id]

    def _timer_loop(self) -> None:
        with self._lock:
            while not self._stopping:
                now = self._clock()
                while self._heap and self._heap[0][0] <= now:
                    due, _, check_id, generation = heapq.heappop(self._heap)
                    entry = self._entries.get(check_id)
                    if entry is None or entry.removed or entry.generation != generation:
                        continue  # stale: the check changed or went away since
                    self._fire(entry, due, now)
                timeout = self._heap[0][0] - now if self._heap else None
                self._changed.wait(timeout)

    def _fire(self, entry: _Entry, due: float, now: float) -> None:
        interval = max(entry.spec.interval, MIN_INTERVAL_SECONDS)
        # Next due from the due time, not from now: no drift. If we are more than an
        # interval late (suspended host, overloaded pool), skip to the next slot ahead.
        next_due = due + interval
        if next_due <= now:
            missed = int((now - due) // interval)
            next_due = due + (missed + 1) * interval
            log.debug("check %s: %d missed run(s) skipped", entry.spec.id, missed)
        self._schedule(entry, next_due)
        if entry.running or entry.queued:
            entry.skipped += 1
            log.warning(
                "check %s is still %s at its next due time; skipping this run",
                entry.spec.id,
                "running" if entry.running else "waiting for a free worker",
            )
            return
        entry.queued = True
        self._ready.put(entry)

    def _worker_loop(self) -> None:
        """Runs in each worker thread; takes the lock only around bookkeeping."""
        while True:
            entry = self._ready.get()
            if entry is None:
                return
            with self._lock:
                entry.queued = False
                if self._stopping or entry.removed:
                    self._forget_if_idle(entry)
                    continue
                entry.running = True
                self._in_flight += 1
                spec = entry.spec
            try:
                self._execute(entry, spec)
            finally:
                with self._lock:
                    self._in_flight -= 1
                    self._changed.notify_all()

    def _execute(self, entry: _Entry, spec: CheckSpec) -> None:
        try:
            result = self._executor.run(spec)
        except Exception as exc:
            # The executor promises not to raise; if it does anyway, report, do not die.
            log.exception("check %s: executor raised", spec.id)
            result = error_result(spec.id, f"UNKNOWN: agent error: {exc!r}")
        with self._lock:
            entry.running = False
            entry.runs += 1
            entry.last_status = result.status
            entry.last_exit_code = result.exit_code
            entry.last_executed_at = result.executed_at
            entry.last_duration_ms = result.duration_ms
            self._forget_if_idle(entry)
        try:
            self._on_result(result)
        except Exception:
            log.exception("check %s: handling its result failed", spec.id)
