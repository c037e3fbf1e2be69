"""One run of the fleet simulator: ramp the fleet in steps, measure each step, optionally
restart the server under it, then count every result against PostgreSQL."""

from __future__ import annotations

import asyncio
import gc
import os
import resource
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import psycopg
import requests
from prometheus_client.parser import text_string_to_metric_families

from bench.fleet_sim.agents import Fleet, FleetConfig
from bench.fleet_sim.stats import Recorder, Window
from tests.support.services import libpq_url

LABELS = {"fleet": "sim"}


@dataclass
class Target:
    """Where the fleet points, and what the run may look at besides the API."""

    base_url: str
    bootstrap_tokens: list[str]
    check_ids: list[str]
    database_url: str | None = None  # for counting results; None: not counted
    processes: Any = None  # callable -> {role: [pids]} when the stack is ours
    restart: Any = None  # callable(kill: bool) when the stack is ours


@dataclass
class Plan:
    steps: list[int]
    ramp_rate: float
    warmup: float
    window: float
    heartbeat_interval: float
    results_interval: float
    poll_wait: float
    restart: str = "none"  # none | term | kill
    restart_after_step: int = -1
    flush_timeout: float = 180.0
    progress: float = 0.0  # seconds between progress lines; 0: none
    settle_timeout: float = 600.0
    seed: int = 1


@dataclass
class StepReport:
    agents: int
    window: dict[str, Any]
    ingest_lag_s: dict[str, float | None] = field(default_factory=dict)
    cpu_percent: dict[str, float] = field(default_factory=dict)
    listen_overflows: int = 0
    registration_s: float = 0.0
    ramp: dict[str, Any] = field(default_factory=dict)  # the window of the fleet's growth


@dataclass
class RunReport:
    steps: list[StepReport] = field(default_factory=list)
    restart: dict[str, Any] | None = None
    accounting: dict[str, Any] | None = None


class Probe:
    """Background samplers: the client loop's own lag, the server's ingest counter."""

    def __init__(self, fleet: Fleet, target: Target, session: aiohttp.ClientSession) -> None:
        self.fleet = fleet
        self.target = target
        self.session = session
        # (monotonic time, results ingested according to /metrics, batches queued)
        self.ingest: list[tuple[float, int, int]] = []
        self._tasks: list[asyncio.Task[None]] = []

    def start(self, progress: float = 0) -> None:
        self._tasks = [asyncio.create_task(self._loop_lag()),
                       asyncio.create_task(self._timeline()),
                       asyncio.create_task(self._metrics())]
        if progress > 0:
            self._tasks.append(asyncio.create_task(self._progress(progress)))

    async def _progress(self, every: float) -> None:
        previous: dict[str, int] = {}
        while True:
            await asyncio.sleep(every)
            total = dict(self.fleet.recorder.total)
            delta = {k: v - previous.get(k, 0) for k, v in total.items() if v != previous.get(k)}
            previous = total
            print(f"  [{time.strftime('%H:%M:%S')}] agents {len(self.fleet.agents)} registered "
                  f"{self.fleet.registered} held {self.fleet.held()} last {every:g}s: "
                  f"{dict(sorted(delta.items()))}", flush=True)

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _loop_lag(self) -> None:
        while True:
            began = time.monotonic()
            await asyncio.sleep(0.1)
            self.fleet.recorder.loop_lag(time.monotonic() - began - 0.1)

    async def _timeline(self) -> None:
        ledger = self.fleet.ledger
        while True:
            ledger.timeline.append((time.monotonic(), ledger.acknowledged))
            await asyncio.sleep(0.5)

    async def _metrics(self) -> None:
        while True:
            sample = await self.scrape()
            if sample is not None:
                self.ingest.append((time.monotonic(), *sample))
            await asyncio.sleep(5)

    async def scrape(self) -> tuple[int, int] | None:
        """(results ingested, result batches accepted and not stored) from /metrics."""
        try:
            async with self.session.get(self.target.base_url + "/metrics",
                                        timeout=aiohttp.ClientTimeout(total=20)) as reply:
                if reply.status != 200:
                    return None
                text = await reply.text()
        except (aiohttp.ClientError, TimeoutError, OSError):
            return None
        ingested = queued = 0
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name in ("aami_results_ingested", "aami_results_ingested_total"):
                    ingested = int(sample.value)
                elif sample.name == "aami_ingest_backlog_batches":
                    queued += int(sample.value)
        return ingested, queued

    def lag_between(self, start: float, end: float) -> dict[str, float | None]:
        """How far storing ran behind acknowledging, sampled in [start, end]: for each
        sample, the time since the fleet had been told about as many results as were
        stored by then (0 when storing had caught up)."""
        lags = []
        ledger = self.fleet.ledger
        for when, ingested, _queued in self.ingest:
            if not start <= when <= end:
                continue
            acknowledged_now = _acknowledged_at_time(ledger.timeline, when)
            if ingested >= acknowledged_now:
                lags.append(0.0)
                continue
            reached = ledger.acknowledged_at(ingested + 1)
            lags.append(max(0.0, when - reached) if reached is not None else 0.0)
        if not lags:
            return {"median": None, "max": None}
        lags.sort()
        return {"median": round(lags[len(lags) // 2], 1), "max": round(lags[-1], 1)}


def _acknowledged_at_time(timeline: list[tuple[float, int]], when: float) -> int:
    count = 0
    for moment, acknowledged in timeline:
        if moment > when:
            break
        count = acknowledged
    return count


class CpuMeter:
    """CPU used by each role of the stack (and by this process) over a window."""

    def __init__(self, target: Target) -> None:
        self.target = target
        self._start: dict[str, float] = {}
        self._began = 0.0

    def _now(self) -> dict[str, float]:
        from bench.fleet_sim.stack import cpu_seconds

        used: dict[str, float] = {}
        if self.target.processes is not None:
            for role, pids in self.target.processes().items():
                used[role] = cpu_seconds(pids)
        usage = resource.getrusage(resource.RUSAGE_SELF)
        used["fleet-sim"] = usage.ru_utime + usage.ru_stime
        used["machine"] = _machine_busy_seconds()
        return used

    def begin(self) -> None:
        self._start = self._now()
        self._began = time.monotonic()

    def end(self) -> dict[str, float]:
        seconds = max(time.monotonic() - self._began, 1e-9)
        now = self._now()
        shares = {role: round(100 * (now[role] - self._start.get(role, 0.0)) / seconds, 1)
                  for role in now}
        # Whatever else ran on the machine meanwhile (other jobs share it): the figures
        # are only comparable between runs that had the machine to themselves.
        ours = sum(v for k, v in shares.items() if k != "machine")
        shares["other"] = round(max(0.0, shares["machine"] - ours), 1)
        return shares


def listen_overflows() -> int:
    """Connections the kernel dropped because a listening socket's accept queue was full
    (machine-wide, since boot): a client sees its SYN unanswered and retries 1 s later."""
    lines = Path("/proc/net/netstat").read_text().splitlines()
    for header, values in zip(lines[::2], lines[1::2], strict=False):
        names, numbers = header.split(), values.split()
        if names and names[0] == "TcpExt:" and "ListenOverflows" in names:
            return int(numbers[names.index("ListenOverflows")])
    return 0


def _machine_busy_seconds() -> float:
    """CPU seconds all cores spent not idle since boot (/proc/stat)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


async def run(target: Target, plan: Plan, *, show: Any = print) -> RunReport:
    """Drive the fleet through ``plan``; ``show`` gets a line per finished step."""
    report = RunReport()
    recorder = Recorder()
    # Thousands of long-lived agents: the default thresholds make the collector walk them
    # all every few seconds, which shows up as client-side latency.
    gc.set_threshold(100_000, 50, 100)
    connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=1.0, ttl_dns_cache=None)
    async with aiohttp.ClientSession(connector=connector, cookie_jar=aiohttp.DummyCookieJar(),
                                     auto_decompress=False) as session:
        config = FleetConfig(
            base_url=target.base_url, bootstrap_tokens=target.bootstrap_tokens,
            check_ids=target.check_ids, heartbeat_interval=plan.heartbeat_interval,
            results_interval=plan.results_interval, poll_wait=plan.poll_wait, labels=LABELS,
            seed=plan.seed,
        )
        fleet = Fleet(config, session, recorder)
        probe = Probe(fleet, target, session)
        probe.start(plan.progress)
        cpu = CpuMeter(target)
        run_started_wall = time.time()
        try:
            for index, count in enumerate(plan.steps):
                began = time.monotonic()
                recorder.begin()
                await fleet.grow_to(count, plan.ramp_rate)
                registration_s = time.monotonic() - began
                ramp = recorder.end().summary()
                await asyncio.sleep(plan.warmup)
                recorder.begin()
                cpu.begin()
                overflows = listen_overflows()
                await asyncio.sleep(plan.window)
                window = recorder.end()
                step = StepReport(
                    agents=len(fleet.agents), window=window.summary(),
                    ingest_lag_s=probe.lag_between(window.started, window.ended),
                    cpu_percent=cpu.end(), registration_s=round(registration_s, 1), ramp=ramp,
                    listen_overflows=listen_overflows() - overflows,
                )
                report.steps.append(step)
                show(step)
                restart_here = plan.restart_after_step % len(plan.steps) == index
                if plan.restart != "none" and restart_here and target.restart is not None:
                    report.restart = await _restart_storm(fleet, target, plan, recorder)
                    show(report.restart)
            if target.database_url is not None:
                report.accounting = await _account(fleet, probe, target, plan, run_started_wall)
        finally:
            await probe.stop()
            await fleet.stop()
    return report


async def _restart_storm(fleet: Fleet, target: Target, plan: Plan,
                         recorder: Recorder) -> dict[str, Any]:
    """Restart the API under the fleet; measure how long until every agent heartbeats OK
    again, and what the fleet saw meanwhile."""
    recorder.begin()
    began = time.monotonic()
    await asyncio.to_thread(target.restart, plan.restart == "kill")
    up = time.monotonic()
    agents = fleet.agents
    deadline = up + 300
    back_at: list[float] = []
    while time.monotonic() < deadline:
        back = [a.last_ok_heartbeat for a in agents if a.last_ok_heartbeat > began]
        if len(back) == len(agents):
            back_at = sorted(back)
            break
        await asyncio.sleep(0.25)
    else:
        back_at = sorted(a.last_ok_heartbeat for a in agents if a.last_ok_heartbeat > began)
    await asyncio.sleep(5)  # the tail of the storm
    window: Window = recorder.end()
    summary = window.summary()

    def at(share: float) -> float | None:
        if len(back_at) < share * len(agents) or not back_at:
            return None
        return round(back_at[max(0, int(share * len(agents)) - 1)] - began, 1)

    return {
        "mode": plan.restart,
        "agents": len(agents),
        "server_down_to_ready_s": round(up - began, 1),
        "agents_back": len(back_at),
        "all_back_after_s": at(1.0),
        "half_back_after_s": at(0.5),
        "p99_back_after_s": at(0.99),
        "window": summary,
    }


async def _account(fleet: Fleet, probe: Probe, target: Target, plan: Plan,
                   run_started_wall: float) -> dict[str, Any]:
    """Deliver what the agents hold, wait for ingestion to finish, count in PostgreSQL."""
    began = time.monotonic()
    held = await fleet.flush(plan.flush_timeout)
    flushed_s = time.monotonic() - began
    made = fleet.ledger.made
    settled = False
    settle_began = time.monotonic()
    last_ingested = -1
    while time.monotonic() - settle_began < plan.settle_timeout:
        sample = await probe.scrape()
        if sample is not None:
            ingested, queued = sample
            if queued == 0 and ingested == last_ingested:
                settled = True
                break
            last_ingested = ingested
        await asyncio.sleep(2)
    stored = await asyncio.to_thread(_stored_result_ids, target.database_url or "",
                                     run_started_wall)
    made_set = set(made)
    lost = made_set - stored
    return {
        "results_made": len(made),
        "acknowledged": fleet.ledger.acknowledged,
        "rejected_by_server": fleet.ledger.rejected,
        "still_held_by_agents": held,
        "stored": len(stored & made_set),
        "lost": len(lost) - held,
        "unexpected_rows": len(stored - made_set),
        "flush_s": round(flushed_s, 1),
        "ingest_settled": settled,
        "settle_s": round(time.monotonic() - settle_began, 1),
    }


def _stored_result_ids(database_url: str, since_wall: float) -> set[str]:
    with psycopg.connect(libpq_url(database_url)) as conn:
        rows = conn.execute(
            "SELECT result_id FROM check_results WHERE executed_at >= to_timestamp(%s)",
            (since_wall - 60,)).fetchall()
    return {str(r[0]) for r in rows}


def healthy(base_url: str) -> bool:
    try:
        return requests.get(base_url + "/healthz", timeout=5).status_code == 200
    except requests.RequestException:
        return False


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    return True
