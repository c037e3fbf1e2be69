"""Simulated agents: thousands of them in one asyncio loop, speaking the wire contract of
docs/agent-api.md the way ``aami-agent`` does, without running any check.

Each agent has its own id, registers with the bootstrap token (from an address of its
own, sent as ``X-Forwarded-For`` to a server that trusts loopback as its proxy), keeps its
access token fresh, heartbeats every ``heartbeat_interval`` (jittered), produces one result
per assigned check every ``results_interval`` and posts them batched, and keeps one
assignment long-poll parked with ``If-None-Match``. Results wait in the agent's memory
until a 202 says the server has them; every result id ever made is kept so that the run
can count what reached PostgreSQL.

Failures are retried the way the real agent retries (agent/backoff.py: capped exponential
backoff with full jitter, ``Retry-After`` as a floor), and a success of any loop cuts the
other loops' backoff short (agent/runner.py ``_server_back``).
"""

from __future__ import annotations

import asyncio
import base64
import functools
import json
import random
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import aiohttp

from agent.backoff import Backoff
from bench.fleet_sim.stats import Recorder

API = "/api/v1"
LONG_POLL_MARGIN = 15.0
# What a real agent's timeouts are (agent/defaults.py, heartbeat.timeout).
REQUEST_TIMEOUT = 10.0
MAX_BATCH = 500
STATUSES = ("ok", "ok", "ok", "ok", "ok", "ok", "ok", "ok", "ok", "warning")
EXIT_CODES = {"ok": 0, "warning": 1, "critical": 2, "unknown": 3}


class Unavailable(Exception):
    """Not answered (transport error, timeout) or answered 429/5xx: retry later."""

    def __init__(self, outcome: str, retry_after: float | None = None) -> None:
        super().__init__(outcome)
        self.outcome = outcome
        self.retry_after = retry_after


class Rejected(Exception):
    """A 4xx the agent cannot retry as it is (401 -> refresh, 404 -> register)."""

    def __init__(self, status: int, body: Any) -> None:
        super().__init__(f"{status}: {body}")
        self.status = status
        self.body = body


@dataclass
class FleetConfig:
    base_url: str
    bootstrap_tokens: list[str]
    check_ids: list[str]
    heartbeat_interval: float = 30.0
    results_interval: float = 60.0
    poll_wait: float = 55.0
    labels: dict[str, str] = field(default_factory=lambda: {"fleet": "sim"})
    seed: int = 1


@dataclass
class Ledger:
    """Every result the fleet made, and how many the server acknowledged."""

    made: list[str] = field(default_factory=list)
    acknowledged: int = 0
    rejected: int = 0
    # (monotonic time, results acknowledged so far), for the ingest lag.
    timeline: list[tuple[float, int]] = field(default_factory=list)

    def acknowledged_at(self, count: int) -> float | None:
        """When the fleet's acknowledged count first reached ``count``."""
        lo, hi = 0, len(self.timeline)
        while lo < hi:
            mid = (lo + hi) // 2
            if self.timeline[mid][1] >= count:
                hi = mid
            else:
                lo = mid + 1
        return self.timeline[lo][0] if lo < len(self.timeline) else None


def _jwt_expiry(token: str) -> float:
    """``exp`` of a JWT, unverified (the server verifies it); far away if unreadable."""
    try:
        payload = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        return float(claims["exp"])
    except (IndexError, ValueError, KeyError, TypeError):
        return time.time() + 10 * 365 * 86400


def _retry_after(headers: Any) -> float | None:
    value = headers.get("Retry-After")
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


class Fleet:
    """The simulated agents, one HTTP client session, and what they recorded."""

    def __init__(self, config: FleetConfig, session: aiohttp.ClientSession,
                 recorder: Recorder) -> None:
        self.config = config
        self.session = session
        self.recorder = recorder
        self.ledger = Ledger()
        self.agents: list[SimAgent] = []
        self.rng = random.Random(config.seed)
        self.running = True
        self.producing = True  # False: stop making results, keep delivering
        self._tasks: set[asyncio.Task[None]] = set()
        self.registered = 0

    # -- growing and stopping --------------------------------------------------------

    async def grow_to(self, count: int, rate: float) -> None:
        """Start agents until there are ``count``, ``rate`` per second; returns once each
        of them has registered (or the fleet is stopped)."""
        started: list[SimAgent] = []
        interval = 1.0 / rate
        next_at = time.monotonic()
        while len(self.agents) < count and self.running:
            agent = SimAgent(self, len(self.agents))
            self.agents.append(agent)
            started.append(agent)
            task = asyncio.create_task(agent.run())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            next_at += interval
            delay = next_at - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
        while self.running and not all(a.registered.is_set() for a in started):
            await asyncio.sleep(0.2)

    async def flush(self, timeout: float) -> int:
        """Stop making results and wait until every agent's unacknowledged results are
        delivered; returns how many are still held after ``timeout``."""
        self.producing = False
        for agent in self.agents:
            agent.wake_results.set()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            held = self.held()
            if held == 0:
                return 0
            await asyncio.sleep(0.5)
        return self.held()

    def held(self) -> int:
        return sum(len(a.unacked) for a in self.agents)

    async def stop(self) -> None:
        self.running = False
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    # -- HTTP ------------------------------------------------------------------------

    async def call(
        self,
        kind: str,
        method: str,
        path: str,
        *,
        agent: SimAgent,
        body: Any = None,
        token: str | None = None,
        etag: str | None = None,
        timeout: float = REQUEST_TIMEOUT,
        ok: tuple[int, ...] = (200,),
        timed: bool = True,
    ) -> tuple[int, Any, Any]:
        """One request; returns (status, JSON body or None, headers) for an expected
        status, raises :class:`Unavailable` or :class:`Rejected` otherwise."""
        headers = {"X-Forwarded-For": agent.address}
        data = None
        if body is not None:
            data = json.dumps(body, separators=(",", ":")).encode()
            headers["Content-Type"] = "application/json"
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        if etag is not None:
            headers["If-None-Match"] = etag
        began = time.monotonic()
        try:
            async with self.session.request(
                method, self.config.base_url + API + path, data=data, headers=headers,
                timeout=aiohttp.ClientTimeout(total=timeout),
            ) as response:
                raw = await response.read()
                status = response.status
                reply_headers = response.headers
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            outcome = type(exc).__name__
            self.recorder.record(kind, outcome, None)
            raise Unavailable(outcome) from None
        elapsed = time.monotonic() - began
        payload: Any = None
        if raw:
            try:
                payload = json.loads(raw)
            except ValueError:
                payload = raw[:200]
        # Latency percentiles are of answers that did the work: a quick refusal would
        # otherwise pull them down. Load shed on purpose (503 server_busy) is counted
        # apart from the 5xx that are failures.
        outcome = BUSY if status == 503 and _error_code(payload) == "server_busy" else str(status)
        self.recorder.record(kind, outcome, elapsed if timed and status in ok else None)
        if status in ok:
            return status, payload, reply_headers
        if status == 429 or status >= 500:
            raise Unavailable(str(status), _retry_after(reply_headers))
        raise Rejected(status, payload)


BUSY = "busy"


def _error_code(payload: Any) -> str | None:
    error = payload.get("error") if isinstance(payload, dict) else None
    return error.get("code") if isinstance(error, dict) else None


class Wake:
    """A sleep that another loop can cut short: one future and one timer per sleep.

    ``asyncio.wait_for(event.wait(), t)`` costs a task, two futures and a timer each
    time, and 10,000 agents sleep a lot: it was the simulator's largest CPU cost."""

    __slots__ = ("_future", "_pending")

    def __init__(self) -> None:
        self._future: asyncio.Future[None] | None = None
        self._pending = False  # set() while not asleep: the next sleep returns at once

    def set(self) -> None:
        future = self._future
        if future is not None and not future.done():
            future.set_result(None)
        else:
            self._pending = True

    async def sleep(self, seconds: float) -> None:
        if self._pending:
            self._pending = False
            return
        if seconds <= 0:
            return
        loop = asyncio.get_running_loop()
        future = self._future = loop.create_future()
        timer = loop.call_later(seconds, _resolve, future)
        try:
            await future
        finally:
            timer.cancel()
            self._future = None


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def _mark_failure_read(task: asyncio.Task[None]) -> None:
    if not task.cancelled():
        task.exception()


class SimAgent:
    """One simulated agent: registration, then three loops (heartbeat, results, poll)."""

    def __init__(self, fleet: Fleet, index: int) -> None:
        self.fleet = fleet
        rng = fleet.rng
        self.index = index
        self.id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        self.hostname = f"sim-{index:05d}"
        self.address = f"10.{(index >> 16) & 255}.{(index >> 8) & 255}.{index & 255}"
        tokens = fleet.config.bootstrap_tokens
        self.token = tokens[index % len(tokens)]
        self.rng = random.Random(rng.getrandbits(64))
        # The secret a real agent keeps beside its id (agent/identity.py): proof of the id
        # when it registers again after a lost reply.
        self.registration_key = f"sim-key-{rng.getrandbits(128):032x}"
        self.access_token = ""
        self.refresh_token = ""
        self.expires_at = 0.0
        self.etag: str | None = None
        self.unacked: list[dict[str, Any]] = []
        self.registered = asyncio.Event()
        self.wake_heartbeat = Wake()
        self.wake_results = Wake()
        self.wake_poll = Wake()
        self.last_ok_heartbeat = 0.0  # monotonic
        self._renewing: asyncio.Task[None] | None = None

    # -- life ------------------------------------------------------------------------

    async def run(self) -> None:
        await self._register_until_done()
        self.registered.set()
        await asyncio.gather(self._heartbeat_loop(), self._results_loop(), self._poll_loop())

    async def _register_until_done(self) -> None:
        backoff = Backoff(rng=self.rng)
        while self.fleet.running:
            try:
                await self._register()
                return
            except Unavailable as exc:
                await asyncio.sleep(backoff.next_delay(exc.retry_after))
            except Rejected:
                # A real agent waits for an operator; here it is a bug of the run.
                await asyncio.sleep(backoff.next_delay(None))

    async def _register(self) -> None:
        body = {
            "token": self.token, "agent_id": self.id,
            "hostname": self.hostname, "ip_address": self.address,
            "labels": self.fleet.config.labels, "agent_version": "fleet-sim",
            "metadata": {"os": "linux", "sim": "1"},
            "registration_key": self.registration_key,
        }
        if self.refresh_token:
            body["refresh_token"] = self.refresh_token  # proof when re-registering
        _, reply, _ = await self.fleet.call("register", "POST", "/bootstrap-tokens/register",
                                            agent=self, body=body, ok=(200, 201))
        self._take_tokens(reply)
        if reply.get("agent_id") and reply["agent_id"] != self.id:
            self.id = reply["agent_id"]
        self.fleet.registered += 1

    def _take_tokens(self, reply: dict[str, Any]) -> None:
        self.access_token = reply["access_token"]
        self.refresh_token = reply.get("refresh_token") or self.refresh_token
        self.expires_at = _jwt_expiry(self.access_token)

    async def _token(self) -> str:
        """A current access token, refreshed a minute before it expires."""
        if time.time() > self.expires_at - 60:
            await self._renew()
        return self.access_token

    async def _renew(self) -> None:
        # One refresh at a time: refresh tokens rotate, a second use would revoke them.
        if self._renewing is None or self._renewing.done():
            self._renewing = asyncio.create_task(self._refresh_or_register())
            # Its caller may be cancelled meanwhile (the shield keeps the renewal going):
            # the failure is then nobody's to read, and must not be reported as unread.
            self._renewing.add_done_callback(_mark_failure_read)
        await asyncio.shield(self._renewing)

    async def _refresh_or_register(self) -> None:
        try:
            _, reply, _ = await self.fleet.call(
                "refresh", "POST", f"/agents/{self.id}/token", agent=self,
                body={"refresh_token": self.refresh_token})
            self._take_tokens(reply)
        except Rejected:
            await self._register()

    async def _authorised(self, request: Callable[..., Any]) -> Any:
        """Run ``request(token=...)``; on 401 renew the token once and retry, on 404
        register again and retry."""
        try:
            return await request(token=await self._token())
        except Rejected as exc:
            if exc.status == 401:
                await self._renew()
            elif exc.status == 404:
                await self._register()
            else:
                raise
        return await request(token=await self._token())

    def _server_back(self, own: Wake) -> None:
        for event in (self.wake_heartbeat, self.wake_results, self.wake_poll):
            if event is not own:
                event.set()

    async def _sleep(self, seconds: float, wake: Wake) -> None:
        await wake.sleep(seconds)

    # -- loops -----------------------------------------------------------------------

    async def _heartbeat_loop(self) -> None:
        interval = self.fleet.config.heartbeat_interval
        backoff = Backoff(rng=self.rng)
        await self._sleep(self.rng.uniform(0, interval), self.wake_heartbeat)
        started = time.monotonic()
        while self.fleet.running:
            body = {"version": "fleet-sim", "uptime_s": round(time.monotonic() - started, 1),
                    "spool_depth": len(self.unacked), "dropped_results": 0,
                    "running_checks": 0, "hostname": self.hostname}
            try:
                _, reply, _ = await self._authorised(functools.partial(
                    self.fleet.call, "heartbeat", "POST", f"/agents/{self.id}/heartbeat",
                    agent=self, body=body))
            except (Unavailable, Rejected) as exc:
                retry_after = exc.retry_after if isinstance(exc, Unavailable) else None
                await self._sleep(backoff.next_delay(retry_after), self.wake_heartbeat)
                continue
            self.last_ok_heartbeat = time.monotonic()
            if backoff.attempts:
                self._server_back(self.wake_heartbeat)
            backoff.reset()
            interval = float(reply.get("heartbeat_interval") or interval)
            await self._sleep(interval * self.rng.uniform(0.95, 1.05), self.wake_heartbeat)

    def _make_results(self) -> None:
        now = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        for check_id in self.fleet.config.check_ids:
            status = self.rng.choice(STATUSES)
            result_id = str(uuid.UUID(int=self.rng.getrandbits(128), version=4))
            self.unacked.append({
                "result_id": result_id, "check_id": check_id, "status": status,
                "exit_code": EXIT_CODES[status], "output": f"{status.upper()} - simulated",
                "perfdata": [{"label": "load1", "value": 0.42, "uom": "", "warn": 4.0,
                              "crit": 8.0}],
                "duration_ms": 12, "executed_at": now,
            })
            self.fleet.ledger.made.append(result_id)

    async def _results_loop(self) -> None:
        interval = self.fleet.config.results_interval
        backoff = Backoff(rng=self.rng)
        next_due = time.monotonic() + self.rng.uniform(0, interval)
        while self.fleet.running:
            now = time.monotonic()
            if self.fleet.producing and now >= next_due:
                self._make_results()
                next_due += interval
            delay = next_due - time.monotonic() if self.fleet.producing else 1.0
            if self.unacked:
                batch = self.unacked[:MAX_BATCH]
                try:
                    _, reply, _ = await self._authorised(functools.partial(
                        self.fleet.call, "results", "POST", f"/agents/{self.id}/check-results",
                        agent=self, body={"results": batch}, ok=(202,)))
                except Unavailable as exc:
                    delay = backoff.next_delay(exc.retry_after)
                except Rejected:
                    delay = backoff.next_delay(None)  # a 4xx here is a bug of the run
                else:
                    del self.unacked[: len(batch)]
                    ledger = self.fleet.ledger
                    ledger.acknowledged += len(batch)
                    ledger.rejected += len(reply.get("rejected") or [])
                    if backoff.attempts:
                        self._server_back(self.wake_results)
                    backoff.reset()
                    if self.unacked:
                        continue
                    delay = next_due - time.monotonic() if self.fleet.producing else 1.0
            await self._sleep(delay, self.wake_results)

    async def _poll_loop(self) -> None:
        wait = self.fleet.config.poll_wait
        backoff = Backoff(rng=self.rng)
        while self.fleet.running:
            parked = self.etag is not None
            kind = "poll" if parked else "assignment"
            path = f"/checks/target/{self.id}" + (f"?wait={wait:g}" if parked else "")
            began = time.monotonic()
            try:
                status, _, headers = await self._authorised(functools.partial(
                    self.fleet.call, kind, "GET", path, agent=self, etag=self.etag,
                    timeout=REQUEST_TIMEOUT + (wait + LONG_POLL_MARGIN if parked else 0),
                    ok=(200, 304), timed=not parked))
            except (Unavailable, Rejected) as exc:
                retry_after = exc.retry_after if isinstance(exc, Unavailable) else None
                await self._sleep(backoff.next_delay(retry_after), self.wake_poll)
                continue
            if backoff.attempts:
                self._server_back(self.wake_poll)
            backoff.reset()
            if status == 200:
                self.etag = headers.get("ETag") or self.etag
            elif time.monotonic() - began < wait * 0.5:
                # Answered early without a change: the real agent pauses (commands).
                await self._sleep(2.0, self.wake_poll)
