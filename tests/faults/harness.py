"""The system under fault: PostgreSQL, Redis, the API, a worker and a real agent.

:class:`FaultSystem` wires the processes of tests/support and tests/integration together
the way production runs them, with one difference: the agent reaches the server through
a :class:`~tests.faults.proxy.TcpProxy`, so a test can break the network path too.

Accounting does not trust the agent. Each of a few checks (every second) is a shell
script that, on every run, reads a fresh UUID from the kernel, appends its check id and
that UUID to a ledger file and prints the UUID. At the end the ledger (every run that
happened on the host) is compared with the rows stored in PostgreSQL (read with SQL, not
through the API), as (check id, UUID) pairs: each run must be stored exactly once under
its own check, or be one of the results the agent says it had to drop (its bounded spool
counts them, and the count travels in its status file and heartbeats); no row may be a
run that did not happen.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import redis

from server.jobs.backlog import CLAIMED_PREFIX, PENDING_KEY
from tests.faults.proxy import TcpProxy
from tests.integration.agent_system import PLUGINS, AdminApi
from tests.integration.live_server import LiveServer, last_line
from tests.integration.processes import LiveAgent, LiveWorker, write_agent_config
from tests.support.services import PostgresServer, RedisServer, libpq_url

RUN_OUTPUT = re.compile(r"\brun ([0-9a-f-]{36})\b")
CHECK_IDS = ("ledger-a", "ledger-b", "ledger-c")
# Built-ins only (``read``, ``echo``): the run forks nothing, so under load it stays far
# inside its one-second timeout, and a run is either in the ledger with its output or
# not at all... except when it is killed between the two lines, which a timeout would do
# (the accounting reports such results by their status).
LEDGER_SCRIPT = """#!/bin/sh
read -r run_id < /proc/sys/kernel/random/uuid
echo "$1 $run_id" >> {ledger}
echo "run $run_id"
"""
# The server's log line for a request that failed with an unexpected error (a 500).
UNHANDLED = '"unhandled error"'


def wait_for(
    probe: Callable[[], Any], timeout: float, what: str, interval: float = 0.1
) -> Any:
    """Call ``probe`` until it returns something truthy (and return it); fail after
    ``timeout`` seconds naming ``what`` and the last value seen."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what} ({value!r})")
        time.sleep(interval)


@dataclass
class Accounting:
    """What the ledger says happened against what PostgreSQL holds."""

    runs: int
    stored_rows: int
    dropped_by_agent: int
    missing: int
    doubled: dict[str, int]
    unknown: int
    not_ok: list[tuple[str, str]]
    figures: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        return {
            "runs": self.runs, "stored": self.stored_rows, "dropped_by_agent":
            self.dropped_by_agent, "missing": self.missing, "doubled": len(self.doubled),
            "unknown": self.unknown, "not_ok": len(self.not_ok), **self.figures,
        }


@dataclass
class FaultSystem:
    redis_server: RedisServer
    postgres: PostgresServer
    server: LiveServer
    worker: LiveWorker
    proxy: TcpProxy
    agent: LiveAgent
    admin: AdminApi
    plugin_dir: Path
    ledger_path: Path
    agent_id: str = ""
    figures: dict[str, Any] = field(default_factory=dict)

    # -- set-up -----------------------------------------------------------------------

    def start_checks(self, *, interval: str = "1s", timeout: str = "1s") -> None:
        """Assign the ledger checks to the agent and wait for their first stored results."""
        script = self.plugin_dir / "ledger.sh"
        script.write_text(LEDGER_SCRIPT.format(ledger=self.ledger_path))
        script.chmod(0o755)
        for check_id in CHECK_IDS:
            self.admin.create_check(check_id, [str(script), check_id], target_id=self.agent_id,
                                    interval=interval, timeout=timeout)
        wait_for(lambda: len(self.stored_outputs()) >= 2 * len(CHECK_IDS), 30,
                 "the first stored results")

    # -- observation ------------------------------------------------------------------

    def ledger(self) -> list[tuple[str, str]]:
        """(check id, run UUID) of every run that happened, in order."""
        lines = self.ledger_path.read_text().splitlines()
        return [(check_id, run) for check_id, run in (line.split() for line in lines)]

    def _rows(self) -> list[tuple[str, str, str, str]]:
        """(result_id, check_id, status, output) of every stored result of the agent."""
        with psycopg.connect(libpq_url(self.server.database_url), connect_timeout=5) as conn:
            rows = conn.execute(
                "SELECT result_id::text, check_id, status, output FROM check_results "
                "WHERE target_id = %s", (self.agent_id,)).fetchall()
        return [(str(a), str(b), str(c), str(d)) for a, b, c, d in rows]

    def stored_outputs(self) -> list[str]:
        """The run UUIDs in the stored outputs (one per stored result of a check)."""
        try:
            rows = self._rows()
        except psycopg.OperationalError:
            return []  # PostgreSQL is the fault being tested
        return [m for *_, output in rows for m in RUN_OUTPUT.findall(output)]

    def spool_depth(self) -> int | None:
        depth = self.agent.status().get("spool_depth")
        return depth if isinstance(depth, int) else None

    def watch(self, seconds: float, sample: Callable[[], None], interval: float = 0.25) -> None:
        """Call ``sample`` every ``interval`` for ``seconds``."""
        until = time.monotonic() + seconds
        while time.monotonic() < until:
            sample()
            time.sleep(interval)

    def server_log(self) -> str:
        try:
            return self.server.log_path.read_text(errors="replace")
        except OSError:
            return ""

    # -- the end ----------------------------------------------------------------------

    def wait_until_drained(self, timeout: float = 90) -> float:
        """Wait for the agent to report an empty spool while connected; returns how long."""
        began = time.monotonic()
        self.agent.wait_for_status(
            lambda s: s.get("spool_depth") == 0 and s.get("connected"), timeout,
            "an empty spool and a connected agent")
        return time.monotonic() - began

    def account(self, *, settle_timeout: float = 90) -> Accounting:
        """Stop the agent (it flushes what it holds), wait for the worker to store what
        was accepted, then compare the ledger with PostgreSQL."""
        self.agent.stop()
        assert self.agent.exit_code == 0, self.agent.log_text()[-3000:]
        final = self.agent.status()
        assert final.get("state") == "stopped", final
        dropped = int(final.get("dropped_results", -1))
        assert dropped >= 0, final
        runs = self.ledger()
        expected = Counter(runs)
        assert max(expected.values(), default=1) == 1, "the kernel made the same UUID twice?"
        # Everything not dropped must arrive; the worker may still be storing. Then
        # nothing may be left in Redis that could still add a row (a late duplicate).
        wait_for(lambda: len(self.stored_outputs()) + dropped >= len(runs), settle_timeout,
                 f"{len(runs) - dropped} stored results", interval=0.5)
        with contextlib.closing(redis_client_for(self.server.redis_url)) as backlog:
            wait_for(lambda: queued_batches(backlog) == 0, settle_timeout,
                     "an empty ingest backlog", interval=0.5)
        rows = self._rows()
        stored = Counter((check_id, run) for _, check_id, _, output in rows
                         for run in RUN_OUTPUT.findall(output))
        result_ids = Counter(result_id for result_id, *_ in rows)
        missing = expected - stored
        return Accounting(
            runs=len(runs),
            stored_rows=len(rows),
            dropped_by_agent=dropped,
            missing=sum(missing.values()),
            doubled={**{f"{c} {r}": n for (c, r), n in stored.items() if n > 1},
                     **{rid: n for rid, n in result_ids.items() if n > 1}},
            unknown=sum((stored - expected).values()),
            not_ok=[(status, output[:200]) for _, _, status, output in rows if status != "ok"],
            figures={**self.figures, "checks": len(CHECK_IDS),
                     "final_spool_depth": final.get("spool_depth")},
        )

    def assert_exact(self, accounting: Accounting, *, dropped: str = "none") -> None:
        """Every run stored exactly once, or counted as dropped by the agent.

        ``dropped``: ``"none"`` (the fault must not cost a single result) or ``"counted"``
        (some may be dropped, and exactly those the agent counted are missing).
        """
        summary = accounting.summary()
        print("accounting:", summary)
        assert accounting.not_ok == [], f"runs that did not complete: {accounting.not_ok[:5]}"
        assert accounting.doubled == {}, f"stored more than once: {accounting.doubled}"
        assert accounting.unknown == 0, summary
        assert accounting.figures.get("final_spool_depth") == 0, summary
        if dropped == "none":
            assert accounting.dropped_by_agent == 0, summary
            assert accounting.missing == 0, f"results lost: {summary}"
        else:
            assert accounting.missing == accounting.dropped_by_agent, (
                f"missing results are not the ones the agent counted as dropped: {summary}")
        assert accounting.stored_rows == accounting.runs - accounting.missing, summary
        unhandled = self.server_log().count(UNHANDLED)
        assert unhandled == 0, (
            f"the API answered 500 {unhandled} time(s):\n{self.server.log_tail()}")


@contextlib.contextmanager
def fault_system(
    tmp_path: Path,
    *,
    redis_server: RedisServer,
    postgres: PostgresServer,
    database_url: str,
    agent_extra: str = "",
    state_dir_ready: Callable[[Path], None] | None = None,
) -> Iterator[FaultSystem]:
    """Start the API (gunicorn, 2 processes), one worker, the proxy and a registered
    agent; stop and reap all of them on the way out.

    ``state_dir_ready`` is called with the agent's state directory before the agent
    starts (to mount a filesystem there).
    """
    server = LiveServer(tmp_path / "server", database_url=database_url,
                        redis_url=redis_server.url,
                        extra_settings={"AAMI_HEARTBEAT_INTERVAL": "2"})
    worker = LiveWorker(server)
    plugin_dir = Path(tempfile.mkdtemp(prefix="aami-fault-checks-"))
    plugin_dir.chmod(0o755)  # the agent runs its checks as nobody when it is root
    ledger_path = plugin_dir / "ledger.txt"
    ledger_path.touch()
    ledger_path.chmod(0o666)
    proxy: TcpProxy | None = None
    agent: LiveAgent | None = None
    admin: AdminApi | None = None
    try:
        server.start()
        worker.start()
        proxy = TcpProxy(server.port)
        admin = AdminApi(server, last_line(server.cli("admin-token", "create", "--name", "ops")))
        bootstrap = last_line(server.cli("token", "create", "--name", "fault-agents"))
        agent_dir = tmp_path / "agent"
        config = write_agent_config(
            agent_dir, server_url=proxy.url, bootstrap_token=bootstrap,
            allowed_paths=[str(PLUGINS), str(plugin_dir)], log_level="info",
            result_buffer_size=2000, extra=agent_extra, allowed_executables=["/bin/sh"],
            policy_keys=[server.policy_public_key],
        )
        if state_dir_ready is not None:
            state_dir_ready(agent_dir / "state")
        agent = LiveAgent(config)
        agent.start()
        agent.wait_for_status(lambda s: s.get("connected") and s.get("last_heartbeat_at"),
                              30, "a first heartbeat")
        system = FaultSystem(redis_server=redis_server, postgres=postgres, server=server,
                             worker=worker, proxy=proxy, agent=agent, admin=admin,
                             plugin_dir=plugin_dir, ledger_path=ledger_path,
                             agent_id=agent.agent_id())
        yield system
    finally:
        if agent is not None:
            agent.close()
        worker.close()
        server.close()
        if proxy is not None:
            proxy.close()
        if admin is not None:
            admin.close()
        shutil.rmtree(plugin_dir, ignore_errors=True)
    assert agent is None or not agent.leftovers, f"the agent left processes: {agent.leftovers}"
    assert not worker.leftovers, f"the worker left processes behind: {worker.leftovers}"
    assert not server.leftovers, f"the server left processes behind: {server.leftovers}"


def queued_batches(client: redis.Redis) -> int:
    """Accepted batches not stored yet: waiting, or claimed by a drain job."""
    claimed = sum(int(client.llen(key)) for key in client.scan_iter(f"{CLAIMED_PREFIX}*"))
    return int(client.llen(PENDING_KEY)) + claimed


def redis_client_for(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=2)
