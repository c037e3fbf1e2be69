"""agent/scheduler.py: intervals, splay, no overlap, concurrency, live updates.

The executor is a fake that sleeps for ``env["SLEEP"]`` seconds and records when each run
started and ended; intervals are a tenth of a second so the whole file stays fast.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import pytest

from agent.model import CheckResult, CheckSpec
from agent.scheduler import MAX_SPLAY_SECONDS, Scheduler, splay_offset

SEED = "6f1c1a8e-agent-id"
# A regression here tends to hang rather than fail: fail fast instead.
pytestmark = pytest.mark.timeout(30)


@dataclass
class Run:
    check_id: str
    command: tuple[str, ...]
    started: float
    ended: float = 0.0


@dataclass
class FakeExecutor:
    runs: list[Run] = field(default_factory=list)
    active: int = 0
    max_active: int = 0
    overlaps: list[str] = field(default_factory=list)
    fail_with: Exception | None = None

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._active_ids: set[str] = set()

    def run(self, spec: CheckSpec) -> CheckResult:
        record = Run(spec.id, spec.command, time.monotonic())
        with self._lock:
            if spec.id in self._active_ids:
                self.overlaps.append(spec.id)
            self._active_ids.add(spec.id)
            self.active += 1
            self.max_active = max(self.max_active, self.active)
            self.runs.append(record)
        time.sleep(float(spec.env.get("SLEEP", "0")))
        with self._lock:
            self._active_ids.discard(spec.id)
            self.active -= 1
            record.ended = time.monotonic()
        if self.fail_with is not None:
            raise self.fail_with
        return CheckResult(
            result_id=f"{spec.id}-{record.started}",
            check_id=spec.id,
            status="ok",
            exit_code=0,
            output="fine",
            perfdata=[],
            duration_ms=0,
            executed_at="2026-01-01T00:00:00.000Z",
        )

    def starts(self, check_id: str) -> list[float]:
        with self._lock:
            return [r.started for r in self.runs if r.check_id == check_id]

    def finished(self, check_id: str) -> list[Run]:
        with self._lock:
            return [r for r in self.runs if r.check_id == check_id and r.ended]


def check(
    check_id: str,
    interval: float = 0.1,
    sleep: float = 0.0,
    timeout: float = 5.0,
    command: tuple[str, ...] = ("/bin/true",),
    name: str = "",
) -> CheckSpec:
    return CheckSpec(
        id=check_id,
        name=name or check_id,
        command=command,
        interval=interval,
        timeout=timeout,
        env={"SLEEP": str(sleep)},
    )


@pytest.fixture
def fake() -> FakeExecutor:
    return FakeExecutor()


@pytest.fixture
def results() -> list[CheckResult]:
    return []


@pytest.fixture
def make_scheduler(
    fake: FakeExecutor, results: list[CheckResult]
) -> Iterator[Callable[..., Scheduler]]:
    made: list[Scheduler] = []

    def make(max_concurrent: int = 4, seed: str = SEED, **kwargs: object) -> Scheduler:
        scheduler = Scheduler(fake, results.append, max_concurrent, seed, **kwargs)  # type: ignore[arg-type]
        made.append(scheduler)
        return scheduler

    yield make
    for scheduler in made:
        scheduler.stop(grace=1.0)


def wait_until(condition: Callable[[], bool], timeout: float = 3.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.005)


def quick_id(max_splay: float, interval: float = 0.1) -> str:
    """A check id whose splay (for SEED) is small, so tests need not wait for it."""
    for n in range(1000):
        if splay_offset(SEED, f"c{n}", interval) < max_splay:
            return f"c{n}"
    raise AssertionError("no such id")


# -- splay -----------------------------------------------------------------------------


def test_splay_is_deterministic_per_seed_and_check() -> None:
    assert splay_offset("agent-a", "disk", 30) == splay_offset("agent-a", "disk", 30)
    assert splay_offset("agent-a", "disk", 30) != splay_offset("agent-b", "disk", 30)
    assert splay_offset("agent-a", "disk", 30) != splay_offset("agent-a", "load", 30)


def test_splay_is_bounded_by_interval_and_sixty_seconds_and_spread() -> None:
    short = [splay_offset(SEED, f"check-{n}", 10) for n in range(500)]
    assert all(0 <= s < 10 for s in short)
    assert min(short) < 0.5 and max(short) > 9.5  # spread over the window, not clumped
    hourly = [splay_offset(f"agent-{n}", "disk", 3600) for n in range(500)]
    assert all(0 <= s < MAX_SPLAY_SECONDS for s in hourly)
    assert max(hourly) > 55


def test_first_run_waits_for_its_splay(
    make_scheduler: Callable[..., Scheduler], fake: FakeExecutor
) -> None:
    scheduler = make_scheduler()
    specs = [check(f"c{n}", interval=0.5) for n in range(4)]
    scheduler.update(specs)
    started = time.monotonic()
    scheduler.start()
    wait_until(lambda: all(fake.starts(s.id) for s in specs))
    for spec in specs:
        expected = splay_offset(SEED, spec.id, 0.5)
        assert fake.starts(spec.id)[0] - started == pytest.approx(expected, abs=0.06)


# -- timing ----------------------------------------------------------------------------


def test_no_drift_next_due_is_last_due_plus_interval(
    make_scheduler: Callable[..., Scheduler], fake: FakeExecutor
) -> None:
    # Each run takes half the interval; "sleep interval after the run" would drift by
    # 50 ms per run, 400 ms over this test.
    scheduler = make_scheduler()
    check_id = quick_id(0.05)
    scheduler.update([check(check_id, interval=0.1, sleep=0.05)])
    scheduler.start()
    wait_until(lambda: len(fake.starts(check_id)) >= 9)
    starts = fake.starts(check_id)
    first = starts[0]
    for n, start in enumerate(starts[:9]):
        assert start - first == pytest.approx(n * 0.1, abs=0.04)


def test_a_check_never_overlaps_itself_and_skipped_runs_are_counted(
    make_scheduler: Callable[..., Scheduler], fake: FakeExecutor
) -> None:
    scheduler = make_scheduler()
    check_id = quick_id(0.05)
    scheduler.update([check(check_id, interval=0.1, sleep=0.25)])
    scheduler.start()
    wait_until(lambda: len(fake.finished(check_id)) >= 3)
    assert fake.overlaps == []
    runs = fake.finished(check_id)
    for before, after in zip(runs, runs[1:], strict=False):
        assert after.started >= before.ended
    assert scheduler.snapshot()[0]["skipped"] >= 3


def test_at_most_max_concurrent_checks_run_at_once(
    make_scheduler: Callable[..., Scheduler], fake: FakeExecutor
) -> None:
    scheduler = make_scheduler(max_concurrent=2)
    scheduler.update([check(f"c{n}", interval=0.1, sleep=0.1) for n in range(6)])
    scheduler.start()
    wait_until(lambda: len(fake.runs) >= 10)
    assert fake.max_active == 2


def test_falling_behind_skips_missed_runs_instead_of_bursting(
    make_scheduler: Callable[..., Scheduler], fake: FakeExecutor
) -> None:
    jump = [0.0]
    scheduler = make_scheduler(clock=lambda: time.monotonic() + jump[0])
    check_id = quick_id(0.05)
    scheduler.update([check(check_id, interval=0.1)])
    scheduler.start()
    wait_until(lambda: len(fake.starts(check_id)) >= 2)
    jump[0] = 5.0  # as if the host slept through 50 intervals
    before = len(fake.starts(check_id))
    time.sleep(0.35)
    ran = len(fake.starts(check_id)) - before
    assert 2 <= ran <= 5
    assert scheduler.snapshot()[0]["next_due_in"] <= 0.1


def test_next_due_is_computed_from_the_due_time_not_from_when_the_timer_woke(
    make_scheduler: Callable[..., Scheduler], fake: FakeExecutor
) -> None:
    now = [1000.0]
    scheduler = make_scheduler(clock=lambda: now[0])
    check_id = next(f"c{n}" for n in range(100) if splay_offset(SEED, f"c{n}", 10) > 1)
    due = 1000.0 + splay_offset(SEED, check_id, 10)
    scheduler.update([check(check_id, interval=10)])
    scheduler.start()

    def fire_at(moment: float, runs: int) -> dict:
        now[0] = moment
        scheduler.update([check(check_id, interval=10)])  # unchanged: only wakes the timer
        wait_until(lambda: len(fake.finished(check_id)) == runs)
        return scheduler.snapshot()[0]

    # The timer woke 30 ms late: the next run stays on the grid, 9.97 s away.
    assert fire_at(due + 0.03, 1)["next_due_in"] == pytest.approx(9.97)
    assert fire_at(due + 10.05, 2)["next_due_in"] == pytest.approx(9.95)
    # 3.5 intervals late (a suspended host): one run now, the missed ones are skipped,
    # and the grid is kept.
    info = fire_at(due + 20 + 35.5, 3)
    assert info["next_due_in"] == pytest.approx(4.5)
    assert info["skipped"] == 0
    time.sleep(0.05)
    assert len(fake.runs) == 3


# -- live updates ----------------------------------------------------------------------


def test_update_adds_and_removes_checks_live(
    make_scheduler: Callable[..., Scheduler], fake: FakeExecutor
) -> None:
    scheduler = make_scheduler()
    first, second = quick_id(0.05), "c-second"
    scheduler.update([check(first)])
    scheduler.start()
    wait_until(lambda: len(fake.starts(first)) >= 2)

    scheduler.update([check(first), check(second)])
    wait_until(lambda: len(fake.starts(second)) >= 2, timeout=0.1 + 3)

    scheduler.update([check(second)])
    time.sleep(0.05)  # a run of `first` may have been in flight
    count = len(fake.starts(first))
    time.sleep(0.35)
    assert len(fake.starts(first)) == count
    assert [info["check_id"] for info in scheduler.snapshot()] == [second]


def test_a_changed_check_is_rescheduled_and_runs_the_new_command(
    make_scheduler: Callable[..., Scheduler], fake: FakeExecutor
) -> None:
    scheduler = make_scheduler()
    check_id = quick_id(0.05)
    scheduler.update([check(check_id, command=("/old",))])
    scheduler.start()
    wait_until(lambda: len(fake.starts(check_id)) >= 1)
    scheduler.update([check(check_id, command=("/new",))])
    wait_until(lambda: any(r.command == ("/new",) for r in fake.runs))
    time.sleep(0.05)
    last_old = max(r.started for r in fake.runs if r.command == ("/old",))
    assert all(r.started > last_old for r in fake.runs if r.command == ("/new",))


def test_unchanged_checks_keep_their_schedule_and_changed_ones_restart_it(
    make_scheduler: Callable[..., Scheduler],
) -> None:
    now = [1000.0]
    scheduler = make_scheduler(clock=lambda: now[0])
    ids = [f"c{n}" for n in range(100)]
    slow = [i for i in ids if splay_offset(SEED, i, 600) > 20][:2]
    kept, changed = slow
    scheduler.update([check(kept, interval=600), check(changed, interval=600)])
    scheduler.start()
    now[0] += 10.0
    # Same fields, new objects, a new display name: not a change of schedule.
    scheduler.update(
        [check(kept, interval=600, name="renamed"), check(changed, interval=600, timeout=9)]
    )
    info = {i["check_id"]: i for i in scheduler.snapshot()}
    assert info[kept]["next_due_in"] == pytest.approx(splay_offset(SEED, kept, 600) - 10)
    assert info[kept]["name"] == "renamed"
    assert info[changed]["next_due_in"] == pytest.approx(splay_offset(SEED, changed, 600))
    assert info[changed]["timeout"] == 9


def test_a_check_removed_while_running_delivers_its_result_and_is_not_rerun(
    make_scheduler: Callable[..., Scheduler], fake: FakeExecutor, results: list[CheckResult]
) -> None:
    scheduler = make_scheduler()
    check_id = quick_id(0.02)
    scheduler.update([check(check_id, interval=0.1, sleep=0.2)])
    scheduler.start()
    wait_until(lambda: fake.active == 1)
    scheduler.update([])
    wait_until(lambda: len(results) == 1)
    time.sleep(0.3)
    assert len(fake.runs) == 1
    assert scheduler.snapshot() == []


def test_re_adding_a_check_while_its_old_run_is_still_going_does_not_overlap(
    make_scheduler: Callable[..., Scheduler], fake: FakeExecutor
) -> None:
    scheduler = make_scheduler()
    check_id = quick_id(0.02)
    scheduler.update([check(check_id, interval=0.1, sleep=0.3)])
    scheduler.start()
    wait_until(lambda: fake.active == 1)
    scheduler.update([])
    scheduler.update([check(check_id, interval=0.05, sleep=0.3)])
    time.sleep(0.6)
    assert fake.overlaps == []


# -- forced runs -----------------------------------------------------------------------


def test_run_now_runs_promptly_unless_already_running(
    make_scheduler: Callable[..., Scheduler], fake: FakeExecutor
) -> None:
    scheduler = make_scheduler()
    check_id = next(i for i in (f"c{n}" for n in range(100)) if splay_offset(SEED, i, 600) > 5)
    scheduler.update([check(check_id, interval=600, sleep=0.2)])
    scheduler.start()
    asked = time.monotonic()
    assert scheduler.run_now(check_id) is True
    wait_until(lambda: fake.active == 1, timeout=1)
    assert fake.starts(check_id)[0] - asked < 0.1
    assert scheduler.run_now(check_id) is False  # running now
    assert scheduler.run_now("no-such-check") is False
    wait_until(lambda: fake.active == 0)
    assert scheduler.run_now(check_id) is True


# -- failures --------------------------------------------------------------------------


def test_on_result_errors_are_logged_and_the_scheduler_keeps_going(
    fake: FakeExecutor, caplog: pytest.LogCaptureFixture
) -> None:
    calls = []

    def broken(result: CheckResult) -> None:
        calls.append(result)
        raise RuntimeError("spool on fire")

    scheduler = Scheduler(fake, broken, 2, SEED)
    check_id = quick_id(0.05)
    scheduler.update([check(check_id, interval=0.05)])
    with caplog.at_level(logging.ERROR, logger="agent.scheduler"):
        scheduler.start()
        wait_until(lambda: len(calls) >= 3)
        scheduler.stop(grace=1)
    assert "handling its result failed" in caplog.text
    assert "spool on fire" in caplog.text


def test_an_executor_that_raises_still_produces_an_unknown_result(
    make_scheduler: Callable[..., Scheduler], fake: FakeExecutor, results: list[CheckResult]
) -> None:
    fake.fail_with = OSError("boom")
    scheduler = make_scheduler()
    check_id = quick_id(0.05)
    scheduler.update([check(check_id, interval=0.1)])
    scheduler.start()
    wait_until(lambda: len(results) >= 2)
    assert results[0].status == "unknown"
    assert results[0].check_id == check_id
    assert "boom" in results[0].output


# -- stop and status -------------------------------------------------------------------


def test_stop_waits_for_running_checks_within_grace(
    fake: FakeExecutor, results: list[CheckResult]
) -> None:
    scheduler = Scheduler(fake, results.append, 2, SEED)
    check_id = quick_id(0.02)
    scheduler.update([check(check_id, interval=0.05, sleep=0.3)])
    scheduler.start()
    wait_until(lambda: fake.active == 1)
    scheduler.stop(grace=5)
    assert fake.active == 0
    assert len(results) == len(fake.runs)
    count = len(fake.runs)
    time.sleep(0.2)
    assert len(fake.runs) == count  # nothing scheduled after stop


def test_stop_gives_up_after_grace(fake: FakeExecutor, results: list[CheckResult]) -> None:
    scheduler = Scheduler(fake, results.append, 1, SEED)
    check_id = quick_id(0.02)
    scheduler.update([check(check_id, interval=5, sleep=1.0)])
    scheduler.start()
    wait_until(lambda: fake.active == 1)
    started = time.monotonic()
    scheduler.stop(grace=0.1)
    assert time.monotonic() - started < 0.5
    wait_until(lambda: len(results) == 1)  # the straggler still reports


def test_snapshot_reports_schedule_and_last_result(
    make_scheduler: Callable[..., Scheduler], fake: FakeExecutor
) -> None:
    scheduler = make_scheduler()
    check_id = quick_id(0.02)
    scheduler.update([check(check_id, interval=0.2, sleep=0.1)])
    assert scheduler.snapshot()[0]["next_due_in"] is None  # not started
    scheduler.start()
    wait_until(lambda: scheduler.running_count() == 1)
    assert scheduler.snapshot()[0]["running"] is True
    wait_until(lambda: scheduler.snapshot()[0]["runs"] == 1)
    info = scheduler.snapshot()[0]
    assert info["last_status"] == "ok"
    assert info["last_exit_code"] == 0
    assert 0 < info["next_due_in"] <= 0.2
    assert info["next_due"].endswith("Z")


def test_set_max_concurrent_resizes_the_pool(
    make_scheduler: Callable[..., Scheduler], fake: FakeExecutor
) -> None:
    scheduler = make_scheduler(max_concurrent=1)
    scheduler.update([check(f"c{n}", interval=0.1, sleep=0.1) for n in range(4)])
    scheduler.start()
    wait_until(lambda: len(fake.runs) >= 3)
    assert fake.max_active == 1
    scheduler.set_max_concurrent(3)
    wait_until(lambda: fake.max_active == 3)
